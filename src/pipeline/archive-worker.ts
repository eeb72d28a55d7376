/**
 * Worker thread: writes one shard of the image's tree as a complete newc
 * archive, compressed as one gzip member or zstd frame, into a file.
 * Blocking calls are fine here: no event loop but this one waits on them.
 */
import { createWriteStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { parentPort } from 'node:worker_threads';
import { compressBuffer, createCompressor } from '../compress/index.ts';
import { type NewcPlan, planNewcArchive } from '../cpio/writer.ts';
import { RampackError } from '../errors.ts';
import type { TreeEntry } from '../tree/entry.ts';
import { releaseNow, ReusedBuffer } from '../util/reused-buffer.ts';
import { SHARD_BYTES, type ShardJob, type ShardResult } from './shards.ts';

/** Structured cloning turns Buffers into plain Uint8Arrays; the writer wants Buffers. */
function revive(entry: TreeEntry): TreeEntry {
  const data: unknown = entry.data;
  if (data instanceof Uint8Array && !Buffer.isBuffer(data)) {
    return { ...entry, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
  }
  return entry;
}

/**
 * Shards up to this size are built in one buffer, kept for the next shard,
 * and compressed in one call: zstd then works on contiguous input, and no
 * stream machinery or buffer is allocated per chunk. gzip through libdeflate
 * writes into a second kept buffer. A shard holding a bigger file streams
 * instead, so memory stays bounded.
 */
const ONE_SHOT_LIMIT = 2 * SHARD_BYTES;
const archiveBuffer = new ReusedBuffer();
const compressedBuffer = new ReusedBuffer();

async function writeShard(job: ShardJob): Promise<ShardResult> {
  const plan = planNewcArchive(job.entries.map(revive), {
    clampMtime: job.clampMtime,
    presentDirectories: new Set(job.presentDirectories),
    partialFiles: job.partialFiles,
  });
  if (plan.size > ONE_SHOT_LIMIT) {
    await streamShard(plan, job);
  } else {
    const archive = archiveBuffer.take(plan.size);
    plan.writeInto(archive);
    const compressed = compressBuffer(job.compression, archive, job.level, compressedBuffer);
    await writeFile(job.output, compressed);
    // zstd (and gzip without libdeflate) return a new buffer each time.
    if (compressed.buffer !== archive.buffer && !compressedBuffer.holds(compressed)) releaseNow(compressed);
  }
  return { index: job.index, uncompressedBytes: plan.size };
}

/**
 * A shard too big for one buffer, compressed as a stream fed from the kept
 * archive buffer: each piece is written into it once the compressor has
 * taken the one before, so nothing is allocated per piece.
 */
async function streamShard(plan: NewcPlan, job: ShardJob): Promise<void> {
  const compressor = createCompressor(job.compression, job.level);
  const feed = async () => {
    for (const piece of plan.chunks(archiveBuffer.take(SHARD_BYTES))) {
      await new Promise<void>((resolve, reject) => compressor.write(piece, (error) => (error ? reject(error) : resolve())));
    }
    compressor.end();
  };
  await Promise.all([feed(), pipeline(compressor, createWriteStream(job.output))]);
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
