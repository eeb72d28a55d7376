/**
 * Worker thread: writes one shard of the image's tree as a complete newc
 * archive, compressed as one gzip member or zstd frame, into a file.
 */
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { parentPort } from 'node:worker_threads';
import { createCompressor } from '../compress/index.ts';
import { newcArchive } from '../cpio/writer.ts';
import { RampackError } from '../errors.ts';
import type { TreeEntry } from '../tree/entry.ts';
import type { ShardJob, ShardResult } from './archive.ts';

/** Structured cloning turns Buffers into plain Uint8Arrays; the writer wants Buffers. */
function revive(entry: TreeEntry): TreeEntry {
  const data: unknown = entry.data;
  if (data instanceof Uint8Array && !Buffer.isBuffer(data)) {
    return { ...entry, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
  }
  return entry;
}

async function writeShard(job: ShardJob): Promise<ShardResult> {
  const archive = newcArchive(job.entries.map(revive), {
    clampMtime: job.clampMtime,
    presentDirectories: new Set(job.presentDirectories),
    partialFiles: job.partialFiles,
  });
  await pipeline(archive, createCompressor(job.compression, job.level), createWriteStream(job.output));
  return { index: job.index, uncompressedBytes: archive.stats.bytes };
}

parentPort!.on('message', (job: ShardJob) => {
  writeShard(job).then(
    (result) => parentPort!.postMessage(result),
    (error: unknown) => {
      const failure = error instanceof Error ? error : new Error(String(error));
      parentPort!.postMessage({
        index: job.index,
        error: {
          message: failure.message,
          exitCode: failure instanceof RampackError ? failure.exitCode : undefined,
          hint: failure instanceof RampackError ? failure.hint : undefined,
        },
      });
    },
  );
});
