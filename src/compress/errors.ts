import { InputError } from '../errors.ts';

/** Compressed data that cannot be decoded: truncated, or not the codec it claims. */
export class CorruptStreamError extends InputError {}

/** Whether an error came from decoding a corrupt compressed stream (ours or zlib's). */
export function isCorruptStreamError(error: unknown): error is Error {
  if (error instanceof CorruptStreamError) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(Z_|ERR_ZLIB|ERR_ZSTD|ZSTD_)/.test(code);
}
