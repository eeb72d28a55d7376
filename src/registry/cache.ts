/**
 * The content-addressed blob cache: `blobs/sha256/<hex>` in the cache (cache/cache.ts). A blob
 * is written under a unique temporary name while it is hashed and enters the
 * cache by rename only once its size and digest check out, so readers never
 * see a partial or wrong blob and concurrent writers of one blob cannot clash.
 * While it is written, a blob can grow over several transfers (a download
 * resumed after a broken connection) or start over, and readers can follow
 * it (follow.ts).
 */
import { createHash, type Hash } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';
import type { Cache } from '../cache/cache.ts';
import { VerificationError } from '../errors.ts';
import { writeAtomically } from '../util/atomic.ts';

export class BlobCache {
  readonly cache: Cache;

  constructor(cache: Cache) {
    this.cache = cache;
  }

  path(digest: string): string {
    return this.cache.blobPath(digest);
  }

  /** Whether the blob is cached (with the expected size, when given); a hit counts as a use of it. */
  async has(digest: string, size?: number): Promise<boolean> {
    const info = await stat(this.path(digest)).catch(() => undefined);
    const hit = info !== undefined && info.isFile() && (size === undefined || info.size === size);
    if (hit) await this.cache.touch(this.path(digest));
    return hit;
  }

  /** Streams `source` into the cache, verifying `size` and `digest`; returns the blob's path. */
  ingest(digest: string, size: number, source: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<string> {
    return this.write(digest, size, (blob) => blob.append(source));
  }

  /**
   * Lets `fill` write the blob, in one go or in several appends and restarts;
   * once it returns, the blob is verified and enters the cache.
   */
  async write(digest: string, size: number, fill: (blob: PartialBlob) => Promise<void>): Promise<string> {
    const path = this.path(digest);
    await writeAtomically(path, async (temporary) => {
      const file = await open(temporary, 'w');
      const blob = new PartialBlob(file, temporary, digest, size);
      try {
        await fill(blob);
        blob.verify();
        await file.sync();
      } finally {
        blob.end();
        await file.close();
      }
    });
    return path;
  }
}

/** Wakes whoever waits for the next change; costs nothing while nobody waits. */
class ChangeSignal {
  private waiting?: { promise: Promise<void>; wake: () => void };

  next(): Promise<void> {
    if (!this.waiting) {
      let wake!: () => void;
      const promise = new Promise<void>((resolve) => (wake = resolve));
      this.waiting = { promise, wake };
    }
    return this.waiting.promise;
  }

  notify(): void {
    this.waiting?.wake();
    this.waiting = undefined;
  }
}

/** A blob being written: the temporary file and the hash of the bytes in it so far. */
export class PartialBlob {
  /** The file being written, which followers read as it grows. */
  readonly temporaryPath: string;
  readonly size: number;
  private readonly file: FileHandle;
  private readonly digest: string;
  private hash: Hash = createHash('sha256');
  private written = 0;
  private restartCount = 0;
  private writing = true;
  private readonly changes = new ChangeSignal();

  constructor(file: FileHandle, temporaryPath: string, digest: string, size: number) {
    this.file = file;
    this.temporaryPath = temporaryPath;
    this.digest = digest;
    this.size = size;
  }

  /** Bytes written so far: the first `received` bytes of the file are final until the next restart. */
  get received(): number {
    return this.written;
  }

  /** How often the blob started over: bytes read from it before a restart are void. */
  get restarts(): number {
    return this.restartCount;
  }

  /** Whether the writing is over (the blob is complete, or its download failed): no more bytes will come. */
  get ended(): boolean {
    return !this.writing;
  }

  /** Resolves at the next append, restart or end. */
  changed(): Promise<void> {
    return this.changes.next();
  }

  end(): void {
    this.writing = false;
    this.changes.notify();
  }

  /** Appends `chunks`; a chunk counts as received only once it is on disk. */
  async append(chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<void> {
    for await (const chunk of chunks) {
      // Stop a server that sends more than promised before it fills the disk.
      if (this.written + chunk.length > this.size) throw new VerificationError(`blob ${this.digest} is larger than its descriptor's ${this.size} bytes`);
      await this.file.write(chunk, 0, chunk.length, this.written);
      this.hash.update(chunk);
      this.written += chunk.length;
      this.changes.notify();
    }
  }

  /** Throws away what was written. */
  async restart(): Promise<void> {
    // Before the truncation: a follower that reads while it runs must see that its bytes are void.
    this.restartCount++;
    this.written = 0;
    this.hash = createHash('sha256');
    this.changes.notify();
    await this.file.truncate(0);
  }

  verify(): void {
    if (this.written !== this.size) {
      throw new VerificationError(`blob ${this.digest} has ${this.written} bytes, its descriptor says ${this.size}`);
    }
    const actual = `sha256:${this.hash.digest('hex')}`;
    if (actual !== this.digest) {
      throw new VerificationError(`blob ${this.digest} does not match its digest (its content hashes to ${actual})`, {
        hint: 'the registry served corrupt data; it was not cached. Retry, or report it to the registry operator',
      });
    }
  }
}
