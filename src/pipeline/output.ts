/**
 * The initramfs file: the image's part followed by rampack's own small
 * archive (/init, /etc/rampack/...), each compressed on its own and
 * concatenated, written atomically; left untouched when it already holds
 * what the same inputs make.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Cache } from '../cache/cache.ts';
import { isOutputRecord, type OutputRecord, type WrittenFile } from '../cache/records.ts';
import { createCompressor } from '../compress/index.ts';
import { newcArchive } from '../cpio/writer.ts';
import { type TreeEntry } from '../tree/entry.ts';
import { writeAtomically } from '../util/atomic.ts';
import { DigestingStream, digestHex } from '../util/digest.ts';
import { cacheImagePart, type ImageArchive } from './image-part.ts';
import type { ArchiveSettings } from './shards.ts';

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
