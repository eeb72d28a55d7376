/**
 * Cutting the image's tree into shards and keying them. Shards are archived
 * and compressed in parallel on worker threads (shard-workers.ts), each a
 * complete newc archive the kernel unpacks on its own
 * (docs/initramfs-layout.md). Boundaries depend on the tree alone, never on
 * the machine, so every machine writes the same bytes; a shard's key is
 * derived from the exact header bytes the writer will emit, each entry's data
 * identity and the writer's code, so equal keys mean equal bytes
 * (docs/cache.md, "What invalidates a shard").
 */
import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import { compressorIdentity, fileExtension, type Compression } from '../compress/index.ts';
import { planNewcArchive } from '../cpio/writer.ts';
import { RampackError } from '../errors.ts';
import { dataSize, type TreeEntry } from '../tree/entry.ts';
import { sourceIdentity } from '../util/source-identity.ts';
import { shardWorkerUrl, type ShardWorkers } from './shard-workers.ts';

export interface ArchiveSettings {
  compression: Compression;
  level?: number;
  /** SOURCE_DATE_EPOCH: later mtimes are lowered to it. */
  clampMtime?: number;
  /** Uncompressed data per shard (default SHARD_BYTES; tests use small ones). */
  shardBytes?: number;
}

/** What a worker is asked to write (see archive-worker.ts). */
export interface ShardJob extends ArchiveSettings {
  index: number;
  /** shardKeys' key: names the bytes the job writes. */
  key: string;
  entries: TreeEntry[];
  /** Directories that earlier shards create. */
  presentDirectories: string[];
  /** Layer tars still being written: final path -> partial path (see NewcOptions). */
  partialFiles?: Map<string, string>;
  output: string;
}

export type ShardResult =
  | { index: number; uncompressedBytes: number; error?: undefined }
  | { index: number; error: { message: string; exitCode?: RampackError['exitCode']; hint?: string } };

/** Uncompressed bytes per shard: large enough that restarting the codec costs nothing measurable. */
export const SHARD_BYTES = 16 * 1024 * 1024;
/**
 * A layer file's identity for shard keys: layer tars are named by their
 * content's digest, so the name names the bytes. Remembered: every file of a
 * shard is in one of a few layer files, and keys are taken every prediction round.
 */
const layerFileNames = new Map<string, string>();
function layerFileIdentity(path: string): string {
  let name = layerFileNames.get(path);
  if (name === undefined) layerFileNames.set(path, (name = basename(path)));
  return name;
}

/**
 * What writes a shard's compressed bytes besides its archive: the codec and
 * level, the implementation behind them, and the code of the shard writer
 * (archive-worker.ts and all it imports: the newc writer, the compression
 * stage and its parameters).
 */
function writerIdentity({ compression, level }: ArchiveSettings): string {
  return JSON.stringify([compression, level ?? null, compressorIdentity(compression), sourceIdentity(shardWorkerUrl())]);
}

/**
 * A key per shard, derived from what the writer will emit: the exact newc
 * headers it plans and the identity of each entry's data (planNewcArchive's
 * identify), chained over the shards before it, and how the archive is
 * compressed (writerIdentity). Equal keys mean equal bytes; no field list or
 * format number has to be kept in step with the writer. The last key names
 * the whole image part. Throws, as the writer would, for a tree newc cannot
 * hold.
 */
export function shardKeys(shards: readonly (readonly TreeEntry[])[], settings: ArchiveSettings): string[] {
  let previous = writerIdentity(settings);
  const present = new Set<string>();
  return shards.map((entries) => {
    const hash = createHash('sha256').update(previous);
    planNewcArchive(entries, { clampMtime: settings.clampMtime, presentDirectories: present }).identify(hash, layerFileIdentity);
    for (const directory of directoriesOf(entries)) present.add(directory);
    previous = hash.digest('hex');
    return previous;
  });
}

/**
 * Cuts sorted entries into runs of about `shardBytes` of data. A big file
 * that would take a shard past twice that starts a shard of its own instead,
 * so shards stay within what a worker compresses in one buffer (in one call)
 * unless one file alone is bigger. A cut never falls inside a hard-link group
 * (the kernel links only within one archive).
 */
export function shardEntries(entries: readonly TreeEntry[], shardBytes = SHARD_BYTES): TreeEntry[][] {
  const lastMember = new Map<number, number>();
  entries.forEach((entry, index) => entry.inode !== undefined && lastMember.set(entry.inode, index));
  const shards: TreeEntry[][] = [];
  let current: TreeEntry[] = [];
  let bytes = 0;
  let openGroupsUntil = -1;
  const cut = () => {
    shards.push(current);
    current = [];
    bytes = 0;
  };
  entries.forEach((entry, index) => {
    const size = dataSize(entry);
    if (bytes > 0 && bytes + size > 2 * shardBytes && index > openGroupsUntil) cut();
    current.push(entry);
    bytes += size;
    if (entry.inode !== undefined) openGroupsUntil = Math.max(openGroupsUntil, lastMember.get(entry.inode)!);
    if (bytes >= shardBytes && index >= openGroupsUntil) cut();
  });
  if (current.length > 0 || shards.length === 0) shards.push(current);
  return shards;
}

export function directoriesOf(entries: readonly TreeEntry[]): string[] {
  return entries.filter((entry) => entry.type === 'dir').map((entry) => entry.path);
}

/** One job per shard, each told which directories the shards before it create. */
export async function shardJobs(
  shards: readonly TreeEntry[][],
  keys: readonly string[],
  settings: ArchiveSettings,
  workers: ShardWorkers,
): Promise<ShardJob[]> {
  const present: string[] = [];
  const jobs: ShardJob[] = [];
  for (const [index, shard] of shards.entries()) {
    const output = await workers.outputPath(`${keys[index]}${fileExtension(settings.compression)}`);
    jobs.push({ ...settings, index, key: keys[index]!, entries: shard, presentDirectories: [...present], output });
    for (const directory of directoriesOf(shard)) present.push(directory); // a spread of a huge shard would overflow the stack
  }
  return jobs;
}
