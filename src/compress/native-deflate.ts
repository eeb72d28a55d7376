/**
 * libdeflate through rampack's native addon (native/deflate.c, built by
 * scripts/build-native.ts into dist/native/deflate.node): gzip about twice as
 * fast as node:zlib at the same level, for whole buffers only. The addon is
 * optional: without it, or with RAMPACK_DEFLATE=zlib, gzip is node:zlib's.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { InputError } from '../errors.ts';

/** What native/deflate.c exports. */
export interface NativeDeflate {
  /** Worst-case size of the gzip member of `length` input bytes, at any level. */
  gzipBound(length: number): number;
  /** Compresses `input` as one gzip member into `output`; returns the bytes written. */
  gzipInto(input: Uint8Array, output: Uint8Array, level: number): number;
  version(): string;
}

/** src/ and dist/ sit at the same depth, so this is dist/native/ from either. */
export const ADDON_PATH = fileURLToPath(new URL('../../dist/native/deflate.node', import.meta.url));

type Loaded = { addon: NativeDeflate; unavailable?: undefined } | { addon?: undefined; unavailable: string };
let loaded: Loaded | undefined;

function load(): Loaded {
  if (!existsSync(ADDON_PATH)) return { unavailable: 'the libdeflate addon is not built: npm run build:native' };
  try {
    return { addon: createRequire(import.meta.url)(ADDON_PATH) as NativeDeflate };
  } catch (error) {
    return { unavailable: `the libdeflate addon did not load: ${(error as Error).message.split('\n')[0]}` };
  }
}

/** Whether RAMPACK_DEFLATE asks for node:zlib; any other value than "zlib" or none is a mistake worth saying. */
function zlibForced(): boolean {
  const choice = process.env.RAMPACK_DEFLATE;
  if (choice === undefined || choice === '') return false;
  if (choice === 'zlib') return true;
  throw new InputError(`RAMPACK_DEFLATE=${choice} is not understood`, {
    hint: 'set RAMPACK_DEFLATE=zlib to force node:zlib for gzip, or unset it to use libdeflate when its addon is built',
  });
}

/** The addon, loaded once per thread, or why not. */
export function loadNativeDeflate(): Loaded {
  loaded ??= load();
  return loaded;
}

/** The addon for gzip, unless it is missing or RAMPACK_DEFLATE=zlib; else why not. */
export function nativeDeflate(): Loaded {
  return zlibForced() ? { unavailable: 'RAMPACK_DEFLATE=zlib' } : loadNativeDeflate();
}
