/**
 * What the cache holds, entry by entry, and removing entries by last use
 * (`rampack cache ls`, `rampack cache prune`; docs/cache.md). An entry is
 * what is useful or useless as a whole: a blob, a layer (its tar and index),
 * an image part (its record and shards; shards other parts share stay), an
 * output record, a kernel, or a shard no part names. Sizes are disk use
 * (layer tars are sparse); last use is the newest mtime of the entry's files
 * (builds touch what they use).
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Cache } from './cache.ts';
import { removeStaleTemporaries } from './lease.ts';
import { isImagePartRecord } from './records.ts';

export const ENTRY_KINDS = ['blob', 'layer', 'image-part', 'shard', 'output', 'kernel'] as const;
export type EntryKind = (typeof ENTRY_KINDS)[number];

export interface CacheEntry {
  kind: EntryKind;
  /** A digest, key or name that identifies it in its kind. */
  name: string;
  /** Disk use of its own files (for an image part: its record and the shards only it names). */
  bytes: number;
  /** Milliseconds since the epoch. */
  lastUse: number;
  /** Its files, removed together. */
  files: string[];
}

interface FileInfo {
  path: string;
  bytes: number;
  mtimeMs: number;
}

/** The files of a folder (recursively for kernels); hidden names, which are work in progress (temporaries), left out. */
async function filesIn(folder: string, recursive = false): Promise<FileInfo[]> {
  const names = await readdir(folder, { recursive }).catch(() => [] as string[]);
  const infos = await Promise.all(
    names
      .filter((name) => !name.split('/').some((part) => part.startsWith('.')))
      .map(async (name) => {
        const path = join(folder, name);
        const info = await stat(path).catch(() => undefined);
        return info?.isFile() ? { path, bytes: info.blocks * 512, mtimeMs: info.mtimeMs } : undefined;
      }),
  );
  return infos.filter((info) => info !== undefined);
}

function entryOf(kind: EntryKind, name: string, files: readonly FileInfo[]): CacheEntry {
  return {
    kind,
    name,
    bytes: files.reduce((sum, file) => sum + file.bytes, 0),
    lastUse: Math.max(...files.map((file) => file.mtimeMs)),
    files: files.map((file) => file.path),
  };
}

/** Groups files by a name derived from each (e.g. a layer's tar and index by digest). */
function grouped(files: readonly FileInfo[], nameOf: (path: string) => string): Map<string, FileInfo[]> {
  const groups = new Map<string, FileInfo[]>();
  for (const file of files) {
    const name = nameOf(file.path);
    groups.set(name, [...(groups.get(name) ?? []), file]);
  }
  return groups;
}

const baseName = (path: string) => path.slice(path.lastIndexOf('/') + 1);
const stem = (path: string) => baseName(path).replace(/\.(tar|json)$/, '');

/** Image parts with the shards only they name; shards no usable record names are entries of their own. */
async function imagePartEntries(cache: Cache): Promise<CacheEntry[]> {
  const shards = new Map((await filesIn(cache.folder('shards'))).map((file) => [baseName(file.path), file]));
  const parts = await Promise.all(
    (await filesIn(cache.folder('imageParts'))).map(async (file) => ({
      file,
      record: await cache.readRecord(file.path, isImagePartRecord, 'image part record'),
    })),
  );
  const users = new Map<string, number>();
  for (const { record } of parts) for (const shard of record?.shards ?? []) users.set(shard.file, (users.get(shard.file) ?? 0) + 1);
  const entries = parts.map(({ file, record }) => {
    const own = (record?.shards ?? []).filter((shard) => users.get(shard.file) === 1).flatMap((shard) => shards.get(shard.file) ?? []);
    return entryOf('image-part', stem(file.path), [file, ...own]);
  });
  const orphans = [...shards].filter(([name]) => !users.has(name)).map(([name, file]) => entryOf('shard', name, [file]));
  return [...entries, ...orphans];
}

/** Every entry of the cache, oldest last use first. */
export async function cacheEntries(cache: Cache): Promise<CacheEntry[]> {
  const blobs = (await filesIn(cache.folder('blobs'))).map((file) => entryOf('blob', `sha256:${baseName(file.path)}`, [file]));
  const layers = [...grouped(await filesIn(cache.folder('layers')), stem)].map(([name, files]) => entryOf('layer', `sha256:${name}`, files));
  const outputs = (await filesIn(cache.folder('outputs'))).map((file) => entryOf('output', stem(file.path), [file]));
  const kernelFiles = await filesIn(cache.folder('kernels'), true);
  const kernels = [...grouped(kernelFiles, (path) => path.slice(cache.folder('kernels').length + 1).split('/')[0]!)].map(([arch, files]) => entryOf('kernel', arch, files));
  const entries = [...blobs, ...layers, ...(await imagePartEntries(cache)), ...outputs, ...kernels];
  return entries.sort((a, b) => a.lastUse - b.lastUse);
}

export interface PruneOptions {
  /** Remove entries last used longer ago than this (ms). */
  olderThanMs?: number;
  /** Then remove the least recently used entries until the cache holds at most this (bytes). */
  maxBytes?: number;
  now?: number;
}

export interface PruneResult {
  removed: CacheEntry[];
  temporaries: string[];
  /** Disk use of the entries left. */
  remainingBytes: number;
}

/** Which entries a prune removes: too old, then least recently used first until under the size limit. Orphan shards always. */
export function entriesToRemove(entries: readonly CacheEntry[], options: PruneOptions): CacheEntry[] {
  const now = options.now ?? Date.now();
  const tooOld = (entry: CacheEntry) => entry.kind === 'shard' || (options.olderThanMs !== undefined && now - entry.lastUse > options.olderThanMs);
  const removed = entries.filter(tooOld);
  let kept = entries.filter((entry) => !tooOld(entry)).reduce((sum, entry) => sum + entry.bytes, 0);
  if (options.maxBytes !== undefined) {
    for (const entry of entries) {
      if (kept <= options.maxBytes) break;
      if (removed.includes(entry)) continue;
      removed.push(entry);
      kept -= entry.bytes;
    }
  }
  return removed;
}

/**
 * Removes stale temporaries and the entries entriesToRemove picks. The caller
 * holds the prune lock with no build running (lease.ts withPruneLock).
 */
export async function pruneCache(cache: Cache, options: PruneOptions): Promise<PruneResult> {
  const temporaries = await removeStaleTemporaries(cache);
  const entries = await cacheEntries(cache);
  const removed = entriesToRemove(entries, options);
  // Records first: an image part without its record is a miss, never a part with a missing shard.
  for (const entry of removed) for (const file of [...entry.files].sort((a, b) => Number(b.endsWith('.json')) - Number(a.endsWith('.json')))) await rm(file, { force: true });
  const remainingBytes = entries.filter((entry) => !removed.includes(entry)).reduce((sum, entry) => sum + entry.bytes, 0);
  return { removed, temporaries, remainingBytes };
}
