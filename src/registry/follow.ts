/**
 * Reading a blob while it downloads into the blob cache: positional reads of
 * the temporary file, up to the bytes written so far, waiting for more. The
 * reader pulls: nothing is queued in memory, so a slow reader only lets the
 * download run ahead on disk, and it reads the bytes back from the page cache
 * right behind the writer.
 */
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { DownloadRestartedError } from '../errors.ts';
import type { IncomingBlob } from '../oci/content.ts';
import type { PartialBlob } from './cache.ts';

/**
 * Bytes per read: the reader waits for this much (or the blob's end) rather
 * than waking for every network packet, so syscalls, stream chunks and the
 * decompressor's thread-pool round trips stay few.
 */
const READ_CHUNK = 1024 * 1024;

/** A download into the blob cache, which can be read while it runs. */
export class CacheDownload implements IncomingBlob {
  readonly path: Promise<string>;
  /** The blob being written once its file exists; undefined when there was none (it was cached already, or the download failed first). */
  private readonly writing: Promise<PartialBlob | undefined>;
  private readonly subject: string;

  /** `download` fills the cache, calling `writing` with the blob once its temporary file exists. */
  constructor(subject: string, download: (writing: (blob: PartialBlob) => void) => Promise<string>) {
    let writing!: (blob: PartialBlob | undefined) => void;
    this.writing = new Promise((resolve) => (writing = resolve));
    this.subject = subject;
    this.path = download(writing);
    // A follower waiting for the blob's file must not wait forever (a blob already resolved is kept).
    this.path.then(() => writing(undefined), () => writing(undefined));
  }

  follow(): AsyncIterable<Buffer> {
    return followBlob(this.writing, this.path, this.subject);
  }
}

/**
 * The blob's bytes from offset 0 as they are written, ending once the blob is
 * verified and in the cache (`complete`, which also carries the download's
 * failure). `writing` is the blob being written, or undefined when there is
 * none to follow (it was cached already): then the cache file is read.
 * Throws DownloadRestartedError when the download starts over after bytes
 * were read; a download resumed with Range just goes on.
 */
async function* followBlob(writing: Promise<PartialBlob | undefined>, complete: Promise<string>, subject: string): AsyncGenerator<Buffer> {
  const blob = await writing;
  // The temporary file is gone once the blob is in the cache (or failed, which `complete` reports).
  const file = blob && (await open(blob.temporaryPath, 'r').catch(() => undefined));
  if (!file) {
    yield* createReadStream(await complete, { highWaterMark: READ_CHUNK }) as AsyncIterable<Buffer>;
    return;
  }
  try {
    yield* readBehindWriter(blob, file, complete, subject);
  } finally {
    await file.close();
  }
}

/** Reads `blob` from `file` as it grows; ends once it is complete, or throws why it never will be. */
async function* readBehindWriter(blob: PartialBlob, file: FileHandle, complete: Promise<string>, subject: string): AsyncGenerator<Buffer> {
  let restarts = blob.restarts;
  let offset = 0;
  while (offset < blob.size) {
    if (blob.restarts !== restarts) {
      if (offset > 0) throw restartedError(subject, offset);
      restarts = blob.restarts;
    }
    const length = Math.min(READ_CHUNK, blob.size - offset);
    if (blob.received - offset < length) {
      // A write that ended short failed: `complete` says why.
      if (blob.ended) break;
      await blob.changed();
      continue;
    }
    const { buffer, bytesRead } = await file.read(Buffer.allocUnsafe(length), 0, length, offset);
    // A restart during the read may have truncated the file under it: the loop's top sorts that out.
    if (blob.restarts !== restarts) continue;
    if (bytesRead !== length) throw new Error(`${subject}: the temporary file holds fewer bytes than were written to it`);
    offset += length;
    yield buffer;
  }
  await complete;
}

function restartedError(subject: string, offset: number): DownloadRestartedError {
  return new DownloadRestartedError(`${subject}: the registry could not resume its download, which started over after ${offset} bytes had been read`, {
    hint: 'read the blob once its download is complete',
  });
}
