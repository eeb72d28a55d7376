/**
 * The image's part of the initramfs: its shards, from the cache when the same
 * tree was written the same way before (shard files under `shards/`, their
 * list under `rootfs/<key>.json`), else written in parallel, reusing those
 * written ahead from a prediction of the tree (speculate.ts) when their keys
 * match, and then cached. A rebuild with only a new agent reuses it whole.
 */
import { mkdir, rename, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Cache } from '../cache/cache.ts';
import { isImagePartRecord, type ImagePartRecord } from '../cache/records.ts';
import { RampackError } from '../errors.ts';
import { type TreeEntry } from '../tree/entry.ts';
import { directoriesOf, shardEntries, shardJobs, shardKeys, type ArchiveSettings, type ShardJob, type ShardResult } from './shards.ts';
import type { ShardWorkers } from './shard-workers.ts';

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
export async function cacheImagePart(base: ImageArchive, cache: Cache): Promise<void> {
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
