/**
 * libdeflate through rampack's native addon (native/deflate.c, built by
 * scripts/build-native.ts into dist/native/deflate.node): gzip about twice as
 * fast as node:zlib at the same level, for whole buffers only. The addon is
 * optional: without it, or with RAMPACK_DEFLATE=zlib, gzip is node:zlib's.
 */
import { addonLoader, addonPath, type LoadedAddon, zlibForced } from './addon.ts';

/** What native/deflate.c exports. */
export interface NativeDeflate {
  /** Worst-case size of the gzip member of `length` input bytes, at any level. */
  gzipBound(length: number): number;
  /** Compresses `input` as one gzip member into `output`; returns the bytes written. */
  gzipInto(input: Uint8Array, output: Uint8Array, level: number): number;
  version(): string;
}

export const ADDON_PATH = addonPath('deflate.node');

/** The addon, loaded once per thread, or why not. */
export const loadNativeDeflate = addonLoader<NativeDeflate>(ADDON_PATH, 'libdeflate', 'apt-get install gcc libdeflate-dev');

/** The addon for gzip, unless it is missing or RAMPACK_DEFLATE=zlib; else why not. */
export function nativeDeflate(): LoadedAddon<NativeDeflate> {
  return zlibForced('RAMPACK_DEFLATE', 'libdeflate', 'gzip') ? { unavailable: 'RAMPACK_DEFLATE=zlib' } : loadNativeDeflate();
}
