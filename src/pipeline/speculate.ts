/**
 * Writing shards of the image's archive while its layers are still unpacking.
 *
 * The archive is in walk order (compareTreePaths), the order most layer tars
 * are written in. So while layers unpack, the tree below the lowest path any
 * unfinished layer has reached is probably final: each prediction round
 * flattens what is indexed so far, keeps the entries below that frontier, cuts
 * them into shards and starts writing every complete one whose data is
 * already on disk. Nothing here needs to be right: the final archive
 * (archive.ts) uses a shard written early only when its key, which covers
 * every byte of it and of the shards before it, equals the key of the shard
 * it needs. A wrong guess (a layer in another order, a late whiteout, a
 * symlinked parent) costs the CPU it took, never correctness.
 */
import { compareTreePaths, parentPath, SLASH_CODE, sortedIndexOf, storedSize, type FileRange, type TreeEntry } from '../tree/entry.ts';
import type { LayerEntry } from '../tar/tar-index.ts';
import type { LayerProgress, UnpackedLayer } from '../layers/unpack.ts';
import type { EarlyShards } from './image-part.ts';
import { SHARD_BYTES, shardEntries, shardJobs, shardKeys, type ArchiveSettings, type ShardJob, type ShardResult } from './shards.ts';
import type { ShardWorkers } from './shard-workers.ts';

/** The image's part of the tree for these layers (as the build computes it). */
export type PredictImagePart = (layers: UnpackedLayer[]) => Promise<readonly TreeEntry[]>;

/** Shards' worth of new data between prediction rounds: fewer rounds cost less, more start shards sooner. */
const ROUND_SHARDS = 2;

interface Snapshot {
  layers: UnpackedLayer[];
  frontier: string;
}

type LayerState = { unpacking: LayerProgress; done?: undefined } | { done: UnpackedLayer; unpacking?: undefined } | undefined;

export class ShardSpeculator implements EarlyShards {
  readonly #workers: ShardWorkers;
  readonly #predict: PredictImagePart;
  readonly #settings: ArchiveSettings;
  readonly #layers: LayerState[];
  /** Shards started or waiting for their data, by key. */
  readonly #started = new Map<string, Promise<ShardResult>>();
  #waiting: { job: ShardJob; start: () => void }[] = [];
  /** The prediction round under way, if any (rounds run one at a time). */
  #round?: Promise<void>;
  #roundWanted = false;
  /** Data below the frontier when the last round started (see #bytesBelowFrontier). */
  #bytesAtLastRound = 0;
  readonly #dataSums = new WeakMap<readonly LayerEntry[], number[]>();
  readonly #orders = new LayerOrders();
  /** Once finished: shards started ahead, and how many of them the archive needs. */
  readonly stats = { written: 0, used: 0 };
  #finished = false;

  constructor(workers: ShardWorkers, predict: PredictImagePart, settings: ArchiveSettings, layerCount: number) {
    this.#workers = workers;
    this.#predict = predict;
    this.#settings = settings;
    this.#layers = Array.from({ length: layerCount }, () => undefined);
  }

  layerProgress(index: number, progress: LayerProgress): void {
    this.#layers[index] = { unpacking: progress };
    this.#startReadyShards();
    this.#roundIfWorthIt();
  }

  layerDone(index: number, layer: UnpackedLayer): void {
    this.#layers[index] = { done: layer };
    this.#startReadyShards();
    this.#roundIfWorthIt();
  }

  take(key: string): Promise<ShardResult> | undefined {
    return this.#started.get(key);
  }

  /**
   * No more rounds; the final archive's shard keys are `needed`: queued
   * shards not among them are withdrawn, those waiting for data start now
   * (every layer is complete).
   */
  finish(needed: ReadonlySet<string>): void {
    this.#finished = true;
    this.stats.written = this.#started.size;
    this.stats.used = [...needed].filter((key) => this.#started.has(key)).length;
    this.#workers.withdraw((job) => needed.has(job.key));
    for (const { job, start } of this.#waiting.splice(0)) {
      if (needed.has(job.key)) start();
      else this.#started.delete(job.key);
    }
  }

  /** Each round flattens every entry so far: only worth it once a few more shards' worth of data is below the frontier. */
  #roundIfWorthIt(): void {
    const snapshot = this.#snapshot(false);
    const step = ROUND_SHARDS * (this.#settings.shardBytes ?? SHARD_BYTES);
    if (snapshot && this.#bytesBelowFrontier(snapshot) - this.#bytesAtLastRound >= step) this.#requestRound();
  }

  /**
   * File data the layers have below the frontier: an upper bound of the
   * predicted tree's (shadowed files count too), from per-layer running sums.
   */
  #bytesBelowFrontier({ layers, frontier }: Snapshot): number {
    let total = 0;
    for (const { entries } of layers) {
      const count = sortedIndexOf(entries, frontier);
      if (count > 0) total += this.#dataSum(entries, count);
    }
    return total;
  }

  /** Data bytes of the first `count` entries (running sums extended as the layer grows). */
  #dataSum(entries: readonly LayerEntry[], count: number): number {
    let sums = this.#dataSums.get(entries);
    if (sums === undefined) this.#dataSums.set(entries, (sums = []));
    for (let i = sums.length; i < count; i++) sums.push((sums[i - 1] ?? 0) + entries[i]!.size);
    return sums[count - 1]!;
  }

  #requestRound(): void {
    if (this.#finished) return;
    if (this.#round) {
      this.#roundWanted = true;
      return;
    }
    const snapshot = this.#snapshot(false);
    if (snapshot) this.#bytesAtLastRound = this.#bytesBelowFrontier(snapshot);
    this.#round = this.#predictAndStart().finally(() => {
      this.#round = undefined;
      if (this.#roundWanted) {
        this.#roundWanted = false;
        this.#requestRound();
      }
    });
  }

  /** Resolves once no prediction round is running or wanted. */
  async idle(): Promise<void> {
    while (this.#round) await this.#round;
  }

  /** One prediction: flatten what is known, start the complete shards below the frontier. */
  async #predictAndStart(): Promise<void> {
    const snapshot = this.#snapshot(true);
    if (snapshot === undefined) return;
    let shards: TreeEntry[][];
    let keys: string[];
    try {
      const entries = await this.#predict(snapshot.layers);
      const below = entries.slice(0, sortedIndexOf(entries, snapshot.frontier));
      shards = shardEntries(below, this.#settings.shardBytes).slice(0, -1); // the last one may still grow
      keys = shardKeys(shards, this.#settings);
    } catch {
      return; // a partial tree may be inconsistent; the final build reports real problems
    }
    if (this.#finished || shards.length === 0) return;
    const jobs = await shardJobs(shards, keys, this.#settings, this.#workers);
    if (this.#finished) return;
    for (const job of jobs) if (!this.#started.has(job.key)) this.#schedule(job);
  }

  /**
   * The layers as far as they are known, and the lowest path an unfinished
   * one has reached; `copy` freezes the entries of unfinished layers.
   */
  #snapshot(copy: boolean): Snapshot | undefined {
    const layers: UnpackedLayer[] = [];
    let frontier: string | undefined;
    for (const state of this.#layers) {
      if (state === undefined) return undefined; // a layer not started could hold anything
      if (state.done) {
        layers.push(state.done);
        continue;
      }
      const { entries, tarPath } = state.unpacking;
      const reached = this.#orders.frontier(entries);
      if (reached === undefined) return undefined;
      if (frontier === undefined || compareTreePaths(reached, frontier) < 0) frontier = reached;
      layers.push({ diffId: '', tarPath, entries: copy ? entries.slice() : entries, warnings: [] });
    }
    return frontier === undefined ? undefined : { layers, frontier };
  }

  /** Starts the job once every byte it reads is on disk. */
  #schedule(job: ShardJob): void {
    let start!: () => void;
    const result = new Promise<ShardResult>((resolve) => {
      start = () => resolve(this.#workers.run({ ...job, partialFiles: this.#partialFiles() }));
    });
    this.#started.set(job.key, result);
    this.#waiting.push({ job, start });
    this.#startReadyShards();
  }

  #startReadyShards(): void {
    const readable = this.#readableBytes();
    this.#waiting = this.#waiting.filter(({ job, start }) => {
      if (!job.entries.every((entry) => isReadable(entry, readable))) return true;
      start();
      return false;
    });
  }

  /** Readable bytes per layer tar; complete tars are absent (all of them is readable). */
  #readableBytes(): Map<string, number> {
    const readable = new Map<string, number>();
    for (const state of this.#layers) {
      if (state?.unpacking) readable.set(state.unpacking.tarPath, state.unpacking.readableBytes);
    }
    return readable;
  }

  #partialFiles(): Map<string, string> {
    const partial = new Map<string, string>();
    for (const state of this.#layers) {
      if (state?.unpacking) partial.set(state.unpacking.tarPath, state.unpacking.partialPath);
    }
    return partial;
  }
}

/** Which orders a layer's entries have kept so far, checked as they arrive. */
interface LayerOrder {
  checked: number;
  walk: boolean;
  bytewise: boolean;
  /** Directories of the layer none of whose children came yet. */
  childless: Set<string>;
}

/**
 * Where each unfinished layer stands in walk order. Most layer tars are in
 * walk order (`tar --sort=name`, Go's directory walks): everything still to
 * come sorts after the last entry. Some builders sort plain bytewise
 * (Docker's legacy builder sorts its changes by path): there "usr/lib-x/…"
 * comes before the children of "usr/lib", which walk order puts first. Until
 * a pair of entries tells the two apart, a directory seen without children
 * whose name is followed by such a sibling holds the frontier back. A layer
 * in neither order gives no frontier.
 */
class LayerOrders {
  readonly #orders = new WeakMap<readonly LayerEntry[], LayerOrder>();

  /** The lowest path (walk order) the rest of the layer can hold, or undefined when unknown. */
  frontier(entries: readonly LayerEntry[]): string | undefined {
    const last = entries.at(-1)?.path;
    if (last === undefined) return undefined;
    const order = this.#update(entries);
    if (!order.walk && !order.bytewise) return undefined;
    if (!order.bytewise) return last;
    return childrenStillToCome(last, order.childless) ?? last;
  }

  #update(entries: readonly LayerEntry[]): LayerOrder {
    let order = this.#orders.get(entries);
    if (order === undefined) this.#orders.set(entries, (order = { checked: 0, walk: true, bytewise: true, childless: new Set() }));
    for (; order.checked < entries.length; order.checked++) {
      const entry = entries[order.checked]!;
      const previous = entries[order.checked - 1]?.path;
      if (previous !== undefined) {
        order.walk &&= compareTreePaths(previous, entry.path) < 0;
        order.bytewise &&= previous < entry.path;
      }
      order.childless.delete(parentPath(entry.path));
      if (entry.type === 'dir') order.childless.add(entry.path);
    }
    return order;
  }
}

/**
 * In a bytewise-sorted stream that reached `last`: the subtree of a
 * childless directory D where `last` goes on with a byte below "/" after D
 * ("usr/lib" for "usr/lib-x/y") may still come, and sorts first in walk order.
 */
function childrenStillToCome(last: string, childless: ReadonlySet<string>): string | undefined {
  for (let i = 1; i < last.length; i++) {
    if (last.charCodeAt(i) < SLASH_CODE && childless.has(last.slice(0, i))) return `${last.slice(0, i)}/`;
  }
  return undefined;
}

function isReadable(entry: TreeEntry, readable: ReadonlyMap<string, number>): boolean {
  const data = entry.data as FileRange | Buffer | undefined;
  if (data === undefined || Buffer.isBuffer(data)) return true;
  const bytes = readable.get(data.file);
  return bytes === undefined || data.offset + storedSize(data) <= bytes;
}

