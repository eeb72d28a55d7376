import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { InputError } from '../errors.ts';

const DIGEST_PATTERN = /^sha256:[a-f0-9]{64}$/;

/** Checks that a digest is a well-formed sha256 digest and returns its hex part. */
export function digestHex(digest: string, what = 'digest'): string {
  if (!DIGEST_PATTERN.test(digest)) {
    throw new InputError(`${what} "${digest}" is not a sha256 digest (sha256:<64 hex digits>)`);
  }
  return digest.slice('sha256:'.length);
}

export function isDigest(text: string): boolean {
  return DIGEST_PATTERN.test(text);
}

export function sha256Digest(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A pass-through stream stage that hashes (sha256) and counts what flows through it. */
export class DigestingStream extends Transform {
  size = 0;
  readonly #hash: Hash = createHash('sha256');
  #result?: string;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  /** `sha256:<hex>` of everything that went through (once the stream has ended). */
  digest(): string {
    this.#result ??= `sha256:${this.#hash.digest('hex')}`;
    return this.#result;
  }
}
