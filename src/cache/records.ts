/**
 * The shapes of the build's records in the cache (cache.ts has the layout),
 * and their checks: Cache.readRecord treats a record that fails one as a
 * miss. The layer index's shape is the layer cache's own (layers/unpack.ts).
 */
import { isCount, isObject, isString, type RecordCheck } from './cache.ts';

/** `rootfs/<key>.json`: the shard files of a cached image part, in order. */
export interface ImagePartRecord {
  uncompressedBytes: number;
  shards: { file: string; size: number }[];
}

/** A shard's file name: its key and the codec's extension; never a path. */
const SHARD_FILE = /^[0-9a-f]{64}(\.gz|\.zst)?$/;

export const isShardFile = (value: unknown): value is string => isString(value) && SHARD_FILE.test(value);

export const isImagePartRecord: RecordCheck<ImagePartRecord> = (value): value is ImagePartRecord =>
  isObject(value) &&
  isCount(value.uncompressedBytes) &&
  Array.isArray(value.shards) &&
  value.shards.every((shard) => isObject(shard) && isShardFile(shard.file) && isCount(shard.size));

/** What an output file holds, as the build reports it. */
export interface WrittenFile {
  sha256: string;
  size: number;
  uncompressedBytes: number;
}

/** `outputs/<sha256 of path>.json`: what was last written to an output path, to recognise a rebuild that changes nothing. */
export interface OutputRecord {
  baseKey: string;
  addedSha256: string;
  /** The file as written: a later edit or replacement changes one of these. */
  size: number;
  mtimeMs: number;
  ino: number;
  result: WrittenFile;
}

const isSha256Hex = (value: unknown): value is string => isString(value) && /^[0-9a-f]{64}$/.test(value);

export const isOutputRecord: RecordCheck<OutputRecord> = (value): value is OutputRecord =>
  isObject(value) &&
  isSha256Hex(value.baseKey) &&
  isSha256Hex(value.addedSha256) &&
  isCount(value.size) &&
  typeof value.mtimeMs === 'number' &&
  isCount(value.ino) &&
  isObject(value.result) &&
  isSha256Hex(value.result.sha256) &&
  isCount(value.result.size) &&
  isCount(value.result.uncompressedBytes);
