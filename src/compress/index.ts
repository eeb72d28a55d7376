/**
 * The compression stage, limited to what the kernel's initramfs decompressors
 * accept: gzip with a plain header, zstd with windows of at most 8 MiB.
 * Whole buffers are gzipped by libdeflate (native-deflate.ts) and layers
 * gunzipped by ISA-L (native-inflate.ts) when their addons are built; streams
 * and everything else go through node:zlib.
 */
import { PassThrough, type Transform } from 'node:stream';
import zlib from 'node:zlib';
import { InputError } from '../errors.ts';
import { ReusedBuffer } from '../util/reused-buffer.ts';
import { nativeDeflate, type NativeDeflate } from './native-deflate.ts';
import { IsalGunzip, nativeInflate } from './native-inflate.ts';
import { OUTPUT_CHUNK, ZstdFramesDecompress } from './zstd-frames.ts';

export { CorruptStreamError, isCorruptStreamError } from './errors.ts';
export { describeGunzip } from './native-inflate.ts';

export const COMPRESSIONS = ['gzip', 'zstd', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

interface LevelRange {
  readonly min: number;
  readonly max: number;
  readonly default: number;
}

/**
 * zstd stops at 19: levels 20-22 (--ultra) use windows of 32-128 MiB that the
 * kernel's decoder cannot allocate; zstd's own level table keeps 1-19 at window
 * logs 19-23, so the frames declare at most 8 MiB.
 */
export const LEVELS: Readonly<Record<Exclude<Compression, 'none'>, LevelRange>> = {
  gzip: { min: 1, max: 9, default: 6 },
  zstd: { min: 1, max: 19, default: 3 },
};

const EXTENSIONS: Readonly<Record<Compression, string>> = { gzip: '.gz', zstd: '.zst', none: '' };

/** File name suffix for a compression ('.gz', '.zst', ''). */
export function fileExtension(compression: Compression): string {
  return EXTENSIONS[compression];
}

/** A compressing Transform; `level` defaults to gzip 6 / zstd 3. */
export function createCompressor(compression: Compression, level?: number): Transform {
  if (compression === 'none') {
    checkNoLevel(level);
    return new PassThrough();
  }
  const chosen = checkedLevel(compression, level);
  if (compression === 'gzip') {
    // Node writes a bare 10-byte header (flags 0, mtime 0): no FNAME/FEXTRA/FCOMMENT/FHCRC.
    return zlib.createGzip({ level: chosen, chunkSize: OUTPUT_CHUNK });
  }
  return zlib.createZstdCompress({ chunkSize: OUTPUT_CHUNK, params: zstdParams(chosen) });
}

function zstdParams(level: number): Record<number, number> {
  return { [zlib.constants.ZSTD_c_compressionLevel]: level, [zlib.constants.ZSTD_c_checksumFlag]: 1 };
}

/**
 * What writes a codec's bytes, e.g. "zstd 1.5.7": the same input compresses
 * to other bytes under another implementation or version, so caches of
 * compressed output are keyed by it. gzip with the addon names zlib too, for
 * shards that stream (createCompressor).
 */
export function compressorIdentity(compression: Compression): string {
  switch (compression) {
    case 'gzip': {
      const { addon } = nativeDeflate();
      const zlibIdentity = `zlib ${process.versions.zlib}`;
      return addon ? `libdeflate ${addon.version()} (whole shards), ${zlibIdentity} (streamed)` : zlibIdentity;
    }
    case 'zstd':
      return `zstd ${process.versions.zstd}`;
    case 'none':
      return 'none';
  }
}

/** compressorIdentity for the log, saying why gzip is not libdeflate's when it is not. */
export function describeCompressor(compression: Compression): string {
  if (compression === 'none') return 'not compressing';
  const { unavailable } = compression === 'gzip' ? nativeDeflate() : {};
  return `compressing with ${compressorIdentity(compression)}${unavailable ? ` (${unavailable})` : ''}`;
}

/**
 * `data` compressed in one call, as one gzip member or zstd frame: for
 * callers that hold the whole input (a shard on a worker thread), where
 * zstd sees it contiguous and no stream machinery runs per chunk. gzip
 * through libdeflate writes into `output`, so a caller that passes the same
 * one each time allocates nothing per call: the result is then a view of it,
 * valid until the next call.
 */
export function compressBuffer(compression: Compression, data: Buffer, level?: number, output = new ReusedBuffer()): Buffer {
  if (compression === 'none') {
    checkNoLevel(level);
    return data;
  }
  const chosen = checkedLevel(compression, level);
  const { addon } = compression === 'gzip' ? nativeDeflate() : {};
  if (addon) return gzipWithLibdeflate(addon, data, chosen, output);
  // One output chunk that holds the worst case: zstd then takes its single-pass
  // path (input compressed in place, no copies into its window buffer, 10% faster
  // and 1.4% smaller than 256 KiB chunks), and nothing is concatenated afterwards.
  const chunkSize = Math.max(OUTPUT_CHUNK, compressBound(data.length));
  return compression === 'gzip'
    ? zlib.gzipSync(data, { level: chosen, chunkSize })
    : zlib.zstdCompressSync(data, { chunkSize, params: zstdParams(chosen) });
}

/** libdeflate writes a bare 10-byte header too (flags 0, mtime 0), which the kernel reads. */
function gzipWithLibdeflate(addon: NativeDeflate, data: Buffer, level: number, output: ReusedBuffer): Buffer {
  const target = output.take(addon.gzipBound(data.length));
  return target.subarray(0, addon.gzipInto(data, target, level));
}

/** At least ZSTD_compressBound and zlib's deflateBound plus the gzip wrapper, for any input length. */
function compressBound(length: number): number {
  return length + (length >> 7) + 64 * 1024;
}

function checkNoLevel(level: number | undefined): void {
  if (level !== undefined) throw new InputError(`compression "none" takes no level (got ${level})`);
}

function checkedLevel(compression: keyof typeof LEVELS, level: number | undefined): number {
  const range = LEVELS[compression];
  if (level === undefined) return range.default;
  if (!Number.isInteger(level) || level < range.min || level > range.max) {
    throw new InputError(`${compression} level ${level} is out of range: use ${range.min} to ${range.max}`, {
      hint: compression === 'zstd' ? 'levels above 19 need windows the kernel cannot decode' : undefined,
    });
  }
  return level;
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** The compression of a stream, judged from its first bytes (at least 4). */
export function detectCompression(head: Buffer): Compression {
  if (head.subarray(0, GZIP_MAGIC.length).equals(GZIP_MAGIC)) return 'gzip';
  if (head.subarray(0, ZSTD_MAGIC.length).equals(ZSTD_MAGIC)) return 'zstd';
  return 'none';
}

/**
 * A decompressing Transform. Back-to-back gzip members or zstd frames come out
 * as one stream. Not handled: NUL padding or a change of codec between them
 * (gzip decoding then stops silently, zstd fails).
 */
export function createDecompressor(compression: Compression): Transform {
  switch (compression) {
    case 'gzip': {
      const { addon } = nativeInflate();
      return addon ? new IsalGunzip(addon) : zlib.createGunzip({ chunkSize: OUTPUT_CHUNK });
    }
    case 'zstd':
      return new ZstdFramesDecompress();
    case 'none':
      return new PassThrough();
  }
}
