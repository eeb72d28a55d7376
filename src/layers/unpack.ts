/**
 * The unpacked layer cache: every layer is verified and decompressed once to
 * `layers/sha256/<diffid>.tar` in the cache (sparse: zero blocks are holes),
 * beside an index of its entries (`<diffid>.json`). Later stages read file data from the .tar by offset, and
 * warm rebuilds reuse both files without touching the blob.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isCount, isObject, isString, type Cache } from '../cache/cache.ts';
import { createDecompressor, detectCompression, isCorruptStreamError } from '../compress/index.ts';
import { DownloadRestartedError, InputError, VerificationError } from '../errors.ts';
import type { IncomingBlob } from '../oci/content.ts';
import type { Descriptor } from '../oci/types.ts';
import { writeAtomically } from '../util/atomic.ts';
import { mapConcurrent } from '../util/concurrency.ts';
import { digestHex, DigestingStream } from '../util/digest.ts';
import { siblingModuleUrl, sourceIdentity } from '../util/source-identity.ts';
import { SparseFileWriter } from './sparse-file.ts';
import { type LayerEntry, type LayerEntryType, TarIndexer, tarIndexStream } from '../tar/tar-index.ts';

export interface UnpackedLayer {
  /** sha256 of the uncompressed tar (the image config's diff_id). */
  diffId: string;
  /** Absolute path of the uncompressed tar in the layer cache. */
  tarPath: string;
  entries: readonly LayerEntry[];
  /** What the indexer let pass with a warning (one line per kind, naming the layer). */
  warnings: readonly string[];
}

/** A compressed (or plain) layer blob: a file on disk, or one still downloading, unpacked as it arrives. */
export type LayerBlob = string | IncomingBlob;

export interface UnpackLayerOptions {
  blob: LayerBlob;
  descriptor: Descriptor;
  diffId: string;
  cache: Cache;
  /** Hears of each step of an unpack that is not served from the cache. */
  onProgress?: (progress: LayerProgress) => void;
}

/**
 * A layer while it unpacks, for work that starts before it is done
 * (pipeline/speculate.ts): what is indexed so far and how much of the tar can be
 * read back. Both only grow.
 */
export interface LayerProgress {
  /** Entries indexed so far, in tar order (the indexer's own, growing array). */
  readonly entries: readonly LayerEntry[];
  /** Where the tar will be once complete (what entries' data ranges name). */
  readonly tarPath: string;
  /** Where the tar is written until then; it is renamed to `tarPath` at the end. */
  readonly partialPath: string;
  /** Leading bytes of the tar that can be read back. */
  readableBytes: number;
}

/**
 * The code that makes an index: the tar indexer and all it imports
 * (util/source-identity.ts). A stored index made by other code is redone, so
 * a change to how tars are read can never be served from an older index.
 */
function indexerIdentity(): string {
  return sourceIdentity(siblingModuleUrl(import.meta.url, '../tar/tar-index'));
}

interface StoredIndex {
  indexer: string;
  diffId: string;
  tarSize: number;
  warnings: string[];
  entries: (Omit<LayerEntry, 'xattrs'> & { xattrs?: Record<string, string> })[];
}

/** Verifies, decompresses and indexes a layer, or returns its cached result. */
export async function unpackLayer(options: UnpackLayerOptions): Promise<UnpackedLayer> {
  const { descriptor, diffId, cache } = options;
  digestHex(descriptor.digest, `digest of layer ${descriptor.digest}`);
  const { tar: tarPath, index: indexPath } = cache.layerPaths(diffId, `layer ${descriptor.digest}`);
  const cached = await readCachedIndex(cache, tarPath, indexPath, diffId);
  if (cached !== undefined) return { diffId, tarPath, ...cached };
  const { entries, warnings, tarSize } = await writeAtomically(tarPath, (temporary) => unpackBlob(options, tarPath, temporary));
  await cache.writeRecord(indexPath, storedIndex(diffId, tarSize, entries, warnings));
  return { diffId, tarPath, entries, warnings };
}

/** The stored index, or undefined when it is missing, unusable or does not match its tar; a hit counts as a use of both files. */
async function readCachedIndex(cache: Cache, tarPath: string, indexPath: string, diffId: string): Promise<IndexedTar | undefined> {
  const stored = await cache.readRecord(indexPath, isStoredIndex, 'layer index');
  const tarSize = await stat(tarPath).then((info) => info.size, () => undefined);
  if (stored === undefined || stored.diffId !== diffId || stored.tarSize !== tarSize) return undefined;
  await cache.touch(tarPath, indexPath);
  // The parsed record is this call's alone: xattr values are decoded in place instead of copying every entry.
  for (const entry of stored.entries) {
    if (entry.xattrs !== undefined) (entry as LayerEntry).xattrs = mapValues(entry.xattrs, (value) => Buffer.from(value, 'base64'));
  }
  return { entries: stored.entries as LayerEntry[], warnings: stored.warnings };
}

const LAYER_ENTRY_TYPES: ReadonlySet<unknown> = new Set<LayerEntryType>(['file', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo']);
const isSparseRun = (run: unknown): boolean => isObject(run) && isCount(run.offset) && isCount(run.size);
const isOptional = <T>(value: unknown, check: (value: unknown) => value is T): boolean => value === undefined || check(value);

function isStoredEntry(value: unknown): value is StoredIndex['entries'][number] {
  return (
    isObject(value) && isString(value.path) && LAYER_ENTRY_TYPES.has(value.type) && isCount(value.mode) && isCount(value.uid) && isCount(value.gid) &&
    Number.isFinite(value.mtime) && isCount(value.size) && isCount(value.dataOffset) && isOptional(value.linkname, isString) &&
    isOptional(value.devMajor, isCount) && isOptional(value.devMinor, isCount) &&
    (value.xattrs === undefined || (isObject(value.xattrs) && Object.values(value.xattrs).every(isString))) &&
    (value.sparse === undefined || (Array.isArray(value.sparse) && value.sparse.every(isSparseRun)))
  );
}

/** An index this code wrote (its indexer identity first: an index from other code is a miss whatever its shape). */
function isStoredIndex(value: unknown): value is StoredIndex {
  return isObject(value) && value.indexer === indexerIdentity() && isString(value.diffId) && isCount(value.tarSize) &&
    Array.isArray(value.warnings) && value.warnings.every(isString) && Array.isArray(value.entries) && value.entries.every(isStoredEntry);
}

function storedIndex(diffId: string, tarSize: number, entries: readonly LayerEntry[], warnings: string[]): StoredIndex {
  return {
    indexer: indexerIdentity(),
    diffId,
    tarSize,
    warnings,
    entries: entries.map(({ xattrs, ...entry }) =>
      xattrs === undefined ? entry : { ...entry, xattrs: mapValues(xattrs, (value) => value.toString('base64')) },
    ),
  };
}

function mapValues<A, B>(record: Record<string, A>, map: (value: A) => B): Record<string, B> {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, map(value)]));
}

/** What indexing a layer's tar gives. */
interface IndexedTar {
  entries: LayerEntry[];
  warnings: string[];
}

/** Where one pass reads a blob from. */
interface BlobSource {
  /** The blob's bytes from offset 0. */
  chunks: AsyncIterable<Buffer>;
  /**
   * The bytes of an incoming blob end only once its download has checked
   * them against the digest, so the pass does not hash them again (one hash
   * pass, the download's, which also keeps bad blobs out of the cache); a
   * file's bytes nothing else checks, so the pass hashes them.
   */
  verified: boolean;
  /** The complete file, hashed when the stream fails to decompress: a wrong digest is the clearer report. */
  file: () => Promise<string>;
}

async function fileSource(path: string, descriptor: Descriptor): Promise<BlobSource> {
  await verifyBlobSize(path, descriptor);
  return { chunks: createReadStream(path) as AsyncIterable<Buffer>, verified: false, file: async () => path };
}

/** Unpacks a file, or an incoming blob as it arrives (from its complete file when its download had to start over). */
async function unpackBlob(options: UnpackLayerOptions, tarPath: string, temporary: string): Promise<IndexedTar & { tarSize: number }> {
  const { blob, descriptor } = options;
  if (typeof blob === 'string') return decompressAndIndex(await fileSource(blob, descriptor), options, tarPath, temporary);
  try {
    return await decompressAndIndex({ chunks: blob.follow(), verified: true, file: () => blob.path }, options, tarPath, temporary);
  } catch (error) {
    if (!(error instanceof DownloadRestartedError)) throw error;
    return decompressAndIndex(await fileSource(await blob.path, descriptor), options, tarPath, temporary);
  }
}

/** One pass over the blob: hash (unless verified), decompress, hash, index, write to `temporary`. */
async function decompressAndIndex(
  source: BlobSource,
  { descriptor, diffId, onProgress }: UnpackLayerOptions,
  tarPath: string,
  temporary: string,
): Promise<IndexedTar & { tarSize: number }> {
  const layer = `layer ${descriptor.digest}`;
  const { head, chunks } = await peek(source.chunks, MAGIC_LENGTH);
  const encoding = detectCompression(head);
  const compressed = source.verified ? undefined : new DigestingStream();
  const uncompressed = new DigestingStream();
  const indexer = new TarIndexer(layer);
  const progress: LayerProgress = { entries: indexer.entries, tarPath, partialPath: temporary, readableBytes: 0 };
  const onReadable = (bytes: number) => {
    progress.readableBytes = bytes;
    onProgress?.(progress);
  };
  try {
    await pipeline([
      // Bytes, not objects: the stream then reads ahead one chunk, not sixteen.
      Readable.from(chunks, { objectMode: false }),
      ...(compressed ? [compressed] : []),
      createDecompressor(encoding),
      uncompressed,
      tarIndexStream(indexer),
      new SparseFileWriter(temporary, onProgress && onReadable),
    ]);
  } catch (error) {
    if (error instanceof DownloadRestartedError) throw error;
    // A damaged blob fails to decompress or parse; its digest is the clearer report.
    await verifyBlobDigest(await source.file(), descriptor);
    if (!isCorruptStreamError(error)) throw error;
    throw new InputError(`${layer} is corrupt: its ${encoding} stream cannot be decompressed (${error.message})`, {
      hint: 'the blob matches its digest, so the image itself is broken; rebuild or re-push it',
      cause: error,
    });
  }
  if (compressed) checkBlobDigest(descriptor, compressed.digest(), compressed.size);
  if (uncompressed.digest() !== diffId) {
    throw new VerificationError(
      `${layer}: its uncompressed content has digest ${uncompressed.digest()}, but the image config lists diff_id ${diffId}`,
      { hint: 'the image config does not match its layers; rebuild or re-push the image' },
    );
  }
  return { entries: indexer.entries, warnings: indexer.warnings(), tarSize: uncompressed.size };
}

/** Enough bytes to tell the codec. */
const MAGIC_LENGTH = 4;

/** The first `length` bytes of a stream (fewer if it is shorter), and the whole stream, those bytes included. */
async function peek(chunks: AsyncIterable<Buffer>, length: number): Promise<{ head: Buffer; chunks: AsyncIterable<Buffer> }> {
  const iterator = chunks[Symbol.asyncIterator]();
  const read: Buffer[] = [];
  let size = 0;
  while (size < length) {
    const next = await iterator.next();
    if (next.done) break;
    read.push(next.value);
    size += next.value.length;
  }
  async function* whole(): AsyncGenerator<Buffer> {
    yield* read;
    yield* { [Symbol.asyncIterator]: () => iterator };
  }
  return { head: Buffer.concat(read, Math.min(size, length)), chunks: whole() };
}

async function verifyBlobSize(blobPath: string, descriptor: Descriptor): Promise<void> {
  const { size } = await stat(blobPath);
  if (size !== descriptor.size) {
    throw new VerificationError(
      `layer ${descriptor.digest}: blob ${blobPath} is ${size} bytes, but the manifest says ${descriptor.size}`,
      { hint: 'the download is incomplete or the blob was replaced; pull the image again' },
    );
  }
}

async function verifyBlobDigest(blobPath: string, descriptor: Descriptor): Promise<void> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(blobPath) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  checkBlobDigest(descriptor, `sha256:${hash.digest('hex')}`, size);
}

function checkBlobDigest(descriptor: Descriptor, digest: string, size: number): void {
  if (digest !== descriptor.digest || size !== descriptor.size) {
    throw new VerificationError(
      `layer ${descriptor.digest}: the blob has digest ${digest} (${size} bytes), expected ${descriptor.digest} (${descriptor.size} bytes)`,
      { hint: 'the blob is damaged or was replaced; pull the image again' },
    );
  }
}

/** Layers unpacked at once: decompression runs on the thread pool, so a few keep every core busy. */
const LAYER_CONCURRENCY = 3;

/**
 * Unpacks an image's layers (bottom to top, the order of `layers` and
 * `diffIds`), each as soon as `blobOf` has its blob: a file once it is
 * local, an incoming blob while it arrives.
 */
export function unpackImageLayers(
  layers: readonly Descriptor[],
  diffIds: readonly string[],
  blobOf: (descriptor: Descriptor, index: number) => LayerBlob | Promise<LayerBlob>,
  cache: Cache,
  onUnpacked: (layer: UnpackedLayer, index: number) => void = () => {},
  onProgress?: (progress: LayerProgress, index: number) => void,
): Promise<UnpackedLayer[]> {
  return mapConcurrent(layers, LAYER_CONCURRENCY, async (descriptor, index) => {
    const layer = await unpackLayer({
      blob: await blobOf(descriptor, index),
      descriptor,
      diffId: diffIds[index]!,
      cache,
      onProgress: onProgress && ((progress) => onProgress(progress, index)),
    });
    onUnpacked(layer, index);
    return layer;
  });
}
