/**
 * Writing the initramfs as the kernel reads it: several complete newc
 * archives, each compressed on its own, concatenated (docs/initramfs-layout.md).
 *
 * - The image's part is cut into shards of similar size that are archived and
 *   compressed in parallel on worker threads. Shard boundaries depend on the
 *   tree alone, never on the machine, so every machine writes the same bytes.
 * - That part is cached (its shard files under `shards/`, their list under
 *   `rootfs/<key>.json`) with a key computed from everything written into it,
 *   so a rebuild with only a new agent reuses it and appends rampack's small
 *   archive (/init, /etc/rampack/...).
 * - Shards are keyed the same way, so those written ahead of time from a
 *   prediction of the tree (build/speculate.ts) are used when they match.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Cache } from '../cache/cache.ts';
import { isImagePartRecord, isOutputRecord, type ImagePartRecord, type OutputRecord, type WrittenFile } from '../cache/records.ts';
import { compressorIdentity, createCompressor, fileExtension, type Compression } from '../compress/index.ts';
import { newcArchive, planNewcArchive } from '../cpio/writer.ts';
import { RampackError } from '../errors.ts';
import { dataSize, type FileRange, type TreeEntry } from '../tree/entry.ts';
import { writeAtomically } from '../util/atomic.ts';
import { DigestingStream, digestHex } from '../util/digest.ts';
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

export interface ImageArchive {
  /** The cache key: it names everything written into this part. */
  key: string;
  /** The compressed archives of the image's part in order: the cached file, or each shard once written. */
  parts: Promise<string>[];
  uncompressedBytes: Promise<number>;
  /** Directories it creates, so rampack's archive may put files in them. */
  directories: ReadonlySet<string>;
  fromCache: boolean;
}

/** Uncompressed bytes per shard: large enough that restarting the codec costs nothing measurable. */
export const SHARD_BYTES = 16 * 1024 * 1024;
/** A file range's identity: layer tars are named by their content's digest, so name, offset and size name the bytes. */
function rangeIdentity(range: FileRange): string {
  return `${basename(range.file)}:${range.offset}:${range.size}`;
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
    planNewcArchive(entries, { clampMtime: settings.clampMtime, presentDirectories: present }).identify(hash, rangeIdentity);
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

/** A shard job's result, turned into an error for the user when it failed. */
async function shardOutcome(result: Promise<ShardResult>): Promise<number> {
  const outcome = await result;
  if (outcome.error) throw new RampackError(outcome.error.message, outcome.error.exitCode ?? 1, { hint: outcome.error.hint });
  return outcome.uncompressedBytes;
}

/** Shards already written or being written ahead of time (build/speculate.ts). */
export interface EarlyShards {
  /** Stops writing ahead: only shards with these keys are still wanted. */
  finish(needed: ReadonlySet<string>): void;
  /** The result of the shard with this key, if one was started. */
  take(key: string): Promise<ShardResult> | undefined;
}

/** A shard's uncompressed size: written early when it was, else now; an early failure is written again so a real error comes from the final tree. */
async function writtenShardSize(job: ShardJob, workers: ShardWorkers, early?: EarlyShards): Promise<number> {
  const written = await early?.take(job.key);
  return shardOutcome(written && !written.error ? Promise.resolve(written) : workers.run(job));
}

/**
 * The image's part of the initramfs, from the cache when the same tree was
 * written the same way before, else written in parallel shards (reusing those
 * `early` already has) and cached.
 */
export async function imageArchive(
  entries: readonly TreeEntry[],
  settings: ArchiveSettings,
  cache: Cache,
  workers: ShardWorkers,
  onProgress: (uncompressedBytes: number) => void,
  early?: EarlyShards,
): Promise<ImageArchive> {
  const shards = shardEntries(entries, settings.shardBytes);
  const keys = shardKeys(shards, settings);
  const key = keys.at(-1)!;
  const directories = new Set(directoriesOf(entries));
  const cached = await cachedImagePart(cache, key);
  if (cached) {
    early?.finish(new Set());
    onProgress(cached.uncompressedBytes);
    const parts = cached.shards.map((shard) => Promise.resolve(cache.shardPath(shard.file)));
    return { key, parts, uncompressedBytes: Promise.resolve(cached.uncompressedBytes), directories, fromCache: true };
  }
  early?.finish(new Set(keys));
  const jobs = await shardJobs(shards, keys, settings, workers);
  let done = 0;
  const written = jobs.map(async (job) => {
    const bytes = await writtenShardSize(job, workers, early);
    onProgress((done += bytes));
    return bytes;
  });
  const parts = written.map((bytes, index) => bytes.then(() => jobs[index]!.output));
  // Awaited by writeInitramfs part by part; a failure must not count as unhandled before that.
  for (const part of parts) part.catch(() => {});
  const uncompressedBytes = Promise.all(written).then((sizes) => sizes.reduce((sum, bytes) => sum + bytes, 0));
  uncompressedBytes.catch(() => {});
  return { key, parts, uncompressedBytes, directories, fromCache: false };
}

/** The cached part, if its record and every shard file (with its size) are there; marked as used. */
async function cachedImagePart(cache: Cache, key: string): Promise<ImagePartRecord | undefined> {
  const recordPath = cache.imagePartRecordPath(key);
  const record = await cache.readRecord(recordPath, isImagePartRecord, 'image part record');
  if (record === undefined) return undefined;
  const files = record.shards.map((shard) => cache.shardPath(shard.file));
  const sizes = await Promise.all(files.map((file) => stat(file).then((info) => info.size, () => -1)));
  if (!sizes.every((size, index) => size === record.shards[index]!.size)) return undefined;
  await cache.touch(recordPath, ...files);
  return record;
}

/** Moves the written shards into the cache (a rename each) and records the part. */
async function cacheImagePart(base: ImageArchive, cache: Cache): Promise<void> {
  await mkdir(cache.folder('shards'), { recursive: true });
  const shards = await Promise.all(
    base.parts.map(async (part) => {
      const path = await part;
      const file = basename(path);
      const { size } = await stat(path);
      await rename(path, cache.shardPath(file));
      return { file, size };
    }),
  );
  const record: ImagePartRecord = { uncompressedBytes: await base.uncompressedBytes, shards };
  await cache.writeRecord(cache.imagePartRecordPath(base.key), record);
}

export interface WrittenInitramfs extends WrittenFile {
  /** The file already held exactly these bytes and was left alone. */
  unchanged: boolean;
}

async function unchangedOutput(cache: Cache, recordPath: string, output: string, baseKey: string, addedSha256: string): Promise<WrittenFile | undefined> {
  const record = await cache.readRecord(recordPath, isOutputRecord, 'output record');
  const current = await stat(output).catch(() => undefined);
  if (!record || !current || record.baseKey !== baseKey || record.addedSha256 !== addedSha256) return undefined;
  const same = record.size === current.size && record.mtimeMs === current.mtimeMs && record.ino === current.ino;
  if (same) await cache.touch(recordPath);
  return same ? record.result : undefined;
}

/**
 * The image's part followed by rampack's archive, written atomically to
 * `path`, unless the file there is what the last build wrote from the same
 * inputs and nobody touched it since (same size, mtime and inode).
 */
export async function writeInitramfs(
  path: string,
  base: ImageArchive,
  added: readonly TreeEntry[],
  settings: ArchiveSettings,
  cache: Cache,
): Promise<WrittenInitramfs> {
  const overlay = newcArchive(added, { clampMtime: settings.clampMtime, presentDirectories: base.directories });
  const addedArchive = Buffer.concat(await overlay.pipe(createCompressor(settings.compression, settings.level)).toArray());
  const addedSha256 = createHash('sha256').update(addedArchive).digest('hex');
  const recordPath = cache.outputRecordPath(path);
  const previous = await unchangedOutput(cache, recordPath, path, base.key, addedSha256);
  if (previous) return { ...previous, unchanged: true };
  const measure = new DigestingStream();
  async function* chunks() {
    // Each shard goes out as soon as it and those before it are written.
    for (const part of base.parts) yield* createReadStream(await part);
    yield addedArchive;
  }
  await writeAtomically(path, (temporary) => pipeline(Readable.from(chunks()), measure, createWriteStream(temporary)));
  if (!base.fromCache) await cacheImagePart(base, cache);
  const result = { sha256: digestHex(measure.digest()), size: measure.size, uncompressedBytes: (await base.uncompressedBytes) + overlay.stats.bytes };
  const written = await stat(path);
  const record: OutputRecord = { baseKey: base.key, addedSha256, size: written.size, mtimeMs: written.mtimeMs, ino: written.ino, result };
  await cache.writeRecord(recordPath, record);
  return { ...result, unchanged: false };
}
