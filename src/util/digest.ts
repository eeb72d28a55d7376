import { createHash } from 'node:crypto';
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
