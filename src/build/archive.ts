/**
 * Writing the initramfs as the kernel reads it: several complete newc
 * archives, each compressed on its own, concatenated (docs/initramfs-layout.md).
 *
 * - The image's part is cut into shards of similar size that are archived and
 *   compressed in parallel on worker threads. Shard boundaries depend on the
 *   tree alone, never on the machine, so every machine writes the same bytes.
 * - That part is cached under a key computed from everything written into it,
 *   so a rebuild with only a new agent reuses it and appends rampack's small
 *   archive (/init, /etc/rampack/...).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, extname, join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { createCompressor, fileExtension, type Compression } from '../compress/index.ts';
import { newcArchive } from '../cpio/writer.ts';
import { RampackError } from '../errors.ts';
import { dataSize, type TreeEntry } from '../tree/entry.ts';
import { writeAtomically, writeFileAtomically } from '../util/atomic.ts';
import { TOOL_VERSION } from '../version.ts';

export interface ArchiveSettings {
  compression: Compression;
  level?: number;
  /** SOURCE_DATE_EPOCH: later mtimes are lowered to it. */
  clampMtime?: number;
}

/** What a worker is asked to write (see archive-worker.ts). */
export interface ShardJob extends ArchiveSettings {
  index: number;
  entries: TreeEntry[];
  /** Directories that earlier shards create. */
  presentDirectories: string[];
  output: string;
}

export type ShardResult =
  | { index: number; uncompressedBytes: number; error?: undefined }
  | { index: number; error: { message: string; exitCode?: RampackError['exitCode']; hint?: string } };

export interface ImageArchive {
  /** The cache key: it names everything written into this part. */
  key: string;
  /** The compressed archives of the image's part, concatenated, in the cache. */
  path: string;
  uncompressedBytes: number;
  /** Directories it creates, so rampack's archive may put files in them. */
  directories: ReadonlySet<string>;
  fromCache: boolean;
}

/** Uncompressed bytes per shard: large enough that restarting the codec costs nothing measurable. */
const SHARD_BYTES = 64 * 1024 * 1024;
/** Bumped whenever the archive layout changes, so old cache entries are not reused. */
const LAYOUT_VERSION = 1;

/** Data identity of an entry: a byte range of a content-addressed layer tar, or the hash of its bytes. */
function dataIdentity(entry: TreeEntry): string {
  const { data } = entry;
  if (data === undefined) return '';
  if (Buffer.isBuffer(data)) return createHash('sha256').update(data).digest('hex');
  return `${basename(data.file)}:${data.offset}:${data.size}`;
}

/** A key over everything that goes into the image's part, and how it is written. */
export function imageArchiveKey(entries: readonly TreeEntry[], settings: ArchiveSettings): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify([LAYOUT_VERSION, TOOL_VERSION, SHARD_BYTES, settings.compression, settings.level ?? null, settings.clampMtime ?? null]));
  for (const e of entries) {
    hash.update(JSON.stringify([e.path, e.type, e.mode, e.uid, e.gid, e.mtime, e.linkTarget ?? null, e.devMajor ?? null, e.devMinor ?? null, e.inode ?? null, dataIdentity(e)]));
    hash.update('\n');
  }
  return hash.digest('hex');
}

/**
 * Cuts sorted entries into runs of about `shardBytes` of data. A cut never
 * falls inside a hard-link group (the kernel links only within one archive).
 */
export function shardEntries(entries: readonly TreeEntry[], shardBytes = SHARD_BYTES): TreeEntry[][] {
  const lastMember = new Map<number, number>();
  entries.forEach((entry, index) => entry.inode !== undefined && lastMember.set(entry.inode, index));
  const shards: TreeEntry[][] = [];
  let current: TreeEntry[] = [];
  let bytes = 0;
  let openGroupsUntil = -1;
  entries.forEach((entry, index) => {
    current.push(entry);
    bytes += dataSize(entry);
    if (entry.inode !== undefined) openGroupsUntil = Math.max(openGroupsUntil, lastMember.get(entry.inode)!);
    if (bytes >= shardBytes && index >= openGroupsUntil) {
      shards.push(current);
      current = [];
      bytes = 0;
    }
  });
  if (current.length > 0 || shards.length === 0) shards.push(current);
  return shards;
}

function workerUrl(): URL {
  // Sources run as .ts (tests, scripts), the published package as .js.
  return new URL(`./archive-worker${extname(fileURLToPath(import.meta.url))}`, import.meta.url);
}

/** Runs the jobs on up to one worker per core; resolves when all are written. */
async function runShardJobs(jobs: ShardJob[], onShardDone: (uncompressedBytes: number) => void): Promise<number> {
  const queue = [...jobs];
  let total = 0;
  const runWorker = async () => {
    const worker = new Worker(workerUrl());
    try {
      for (let job = queue.shift(); job; job = queue.shift()) {
        worker.postMessage(job);
        const result = await new Promise<ShardResult>((resolve, reject) => {
          worker.once('message', resolve);
          worker.once('error', reject);
        });
        if (result.error) {
          queue.length = 0;
          throw new RampackError(result.error.message, result.error.exitCode ?? 1, { hint: result.error.hint });
        }
        total += result.uncompressedBytes;
        onShardDone(result.uncompressedBytes);
      }
    } finally {
      await worker.terminate();
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs.length, availableParallelism()) }, runWorker));
  return total;
}

function directoriesOf(entries: readonly TreeEntry[]): string[] {
  return entries.filter((entry) => entry.type === 'dir').map((entry) => entry.path);
}

async function concatenate(parts: readonly string[], output: string): Promise<void> {
  for (const [index, part] of parts.entries()) {
    await pipeline(createReadStream(part), createWriteStream(output, { flags: index === 0 ? 'w' : 'a' }));
  }
}

/**
 * The image's part of the initramfs, from the cache when the same tree was
 * written the same way before, else written in parallel shards and cached.
 */
export async function imageArchive(
  entries: readonly TreeEntry[],
  settings: ArchiveSettings,
  cacheDir: string,
  onProgress: (uncompressedBytes: number) => void,
): Promise<ImageArchive> {
  const key = imageArchiveKey(entries, settings);
  const path = join(cacheDir, 'rootfs', `${key}.cpio${fileExtension(settings.compression)}`);
  const metaPath = `${path}.json`;
  const directories = new Set(directoriesOf(entries));
  const cached = await readFile(metaPath, 'utf8').then((text) => JSON.parse(text) as { uncompressedBytes: number; size: number }, () => undefined);
  if (cached && (await stat(path).then((info) => info.size, () => -1)) === cached.size) {
    onProgress(cached.uncompressedBytes);
    return { key, path, uncompressedBytes: cached.uncompressedBytes, directories, fromCache: true };
  }
  const work = await mkdtemp(join(cacheDir, '.shards-'));
  try {
    const shards = shardEntries(entries);
    const present: string[] = [];
    const jobs = shards.map((shard, index): ShardJob => {
      const job = { ...settings, index, entries: shard, presentDirectories: [...present], output: join(work, `${index}`) };
      present.push(...directoriesOf(shard));
      return job;
    });
    let done = 0;
    const uncompressedBytes = await runShardJobs(jobs, (bytes) => onProgress((done += bytes)));
    await writeAtomically(path, (temporary) => concatenate(jobs.map((job) => job.output), temporary));
    await writeFileAtomically(metaPath, JSON.stringify({ uncompressedBytes, size: (await stat(path)).size }));
    return { key, path, uncompressedBytes, directories, fromCache: false };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Counts and hashes the bytes that flow through. */
class Measure extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    done(null, chunk);
  }
  digestHex(): string {
    return this.hash.digest('hex');
  }
}

export interface WrittenInitramfs {
  sha256: string;
  size: number;
  uncompressedBytes: number;
  /** The file already held exactly these bytes and was left alone. */
  unchanged: boolean;
}

/** What was last written to an output path, to recognise a rebuild that changes nothing. */
interface OutputRecord {
  baseKey: string;
  addedSha256: string;
  /** The file as written: a later edit or replacement changes one of these. */
  size: number;
  mtimeMs: number;
  ino: number;
  result: Omit<WrittenInitramfs, 'unchanged'>;
}

function outputRecordPath(cacheDir: string, output: string): string {
  return join(cacheDir, 'outputs', `${createHash('sha256').update(output).digest('hex')}.json`);
}

async function unchangedOutput(recordPath: string, output: string, baseKey: string, addedSha256: string): Promise<OutputRecord['result'] | undefined> {
  const record = await readFile(recordPath, 'utf8').then((text) => JSON.parse(text) as OutputRecord, () => undefined);
  const current = await stat(output).catch(() => undefined);
  if (!record || !current || record.baseKey !== baseKey || record.addedSha256 !== addedSha256) return undefined;
  const same = record.size === current.size && record.mtimeMs === current.mtimeMs && record.ino === current.ino;
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
  cacheDir: string,
): Promise<WrittenInitramfs> {
  const overlay = newcArchive(added, { clampMtime: settings.clampMtime, presentDirectories: base.directories });
  const addedArchive = Buffer.concat(await overlay.pipe(createCompressor(settings.compression, settings.level)).toArray());
  const addedSha256 = createHash('sha256').update(addedArchive).digest('hex');
  const recordPath = outputRecordPath(cacheDir, path);
  const previous = await unchangedOutput(recordPath, path, base.key, addedSha256);
  if (previous) return { ...previous, unchanged: true };
  async function* chunks() {
    yield* createReadStream(base.path);
    yield addedArchive;
  }
  const measure = new Measure();
  await writeAtomically(path, (temporary) => pipeline(Readable.from(chunks()), measure, createWriteStream(temporary)));
  const result = { sha256: measure.digestHex(), size: measure.bytes, uncompressedBytes: base.uncompressedBytes + overlay.stats.bytes };
  const written = await stat(path);
  const record: OutputRecord = { baseKey: base.key, addedSha256, size: written.size, mtimeMs: written.mtimeMs, ino: written.ino, result };
  await writeFileAtomically(recordPath, JSON.stringify(record));
  return { ...result, unchanged: false };
}
