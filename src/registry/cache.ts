/**
 * The content-addressed blob cache: `<cacheDir>/blobs/sha256/<hex>`. A blob
 * is written under a unique temporary name while it is hashed and enters the
 * cache by rename only once its size and digest check out, so readers never
 * see a partial or wrong blob and concurrent writers of one blob cannot clash.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { VerificationError } from '../errors.ts';
import { writeAtomically } from '../util/atomic.ts';
import { digestHex } from '../util/digest.ts';

/** `$XDG_CACHE_HOME/rampack`, else `~/.cache/rampack` (relative XDG paths are ignored, as the spec says). */
export function defaultCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache'), 'rampack');
}

export class BlobCache {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  path(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', digestHex(digest, 'blob digest'));
  }

  /** Whether the blob is cached (with the expected size, when given). */
  async has(digest: string, size?: number): Promise<boolean> {
    const info = await stat(this.path(digest)).catch(() => undefined);
    return info !== undefined && info.isFile() && (size === undefined || info.size === size);
  }

  /** Streams `source` into the cache, verifying `size` and `digest`; returns the blob's path. */
  async ingest(digest: string, size: number, source: AsyncIterable<Uint8Array>): Promise<string> {
    const path = this.path(digest);
    await writeAtomically(path, async (temporary) => {
      const hash = createHash('sha256');
      let received = 0;
      const measure = async function* (chunks: AsyncIterable<Uint8Array>) {
        for await (const chunk of chunks) {
          received += chunk.length;
          // Stop a server that sends more than promised before it fills the disk.
          if (received > size) throw new VerificationError(`blob ${digest} is larger than its descriptor's ${size} bytes`);
          hash.update(chunk);
          yield chunk;
        }
      };
      await pipeline(source, measure, createWriteStream(temporary, { flush: true }));
      if (received !== size) {
        throw new VerificationError(`blob ${digest} has ${received} bytes, its descriptor says ${size}`);
      }
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== digest) {
        throw new VerificationError(`blob ${digest} does not match its digest (its content hashes to ${actual})`, {
          hint: 'the registry served corrupt data; it was not cached. Retry, or report it to the registry operator',
        });
      }
    });
    return path;
  }
}
