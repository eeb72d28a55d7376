/**
 * The unpacked layer cache: every layer is verified and decompressed once to
 * `<cacheDir>/layers/sha256/<diffid>.tar` (sparse: zero blocks are holes),
 * beside an index of its entries (`<diffid>.json`). Later stages read file data from the .tar by offset, and
 * warm rebuilds reuse both files without touching the blob.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDecompressor, detectCompression, isCorruptStreamError } from '../compress/index.ts';
import { InputError, VerificationError } from '../errors.ts';
import type { Descriptor } from '../image/types.ts';
import { writeAtomically, writeFileAtomically } from '../util/atomic.ts';
import { mapConcurrent } from '../util/concurrency.ts';
import { digestHex } from '../util/digest.ts';
import { SparseFileWriter } from './sparse-file.ts';
import { type LayerEntry, TarIndexer, tarIndexStream } from './tar-index.ts';

export interface UnpackedLayer {
  /** sha256 of the uncompressed tar (the image config's diff_id). */
  diffId: string;
  /** Absolute path of the uncompressed tar in the layer cache. */
  tarPath: string;
  entries: readonly LayerEntry[];
}

export interface UnpackLayerOptions {
  /** The compressed (or plain) layer blob on disk. */
  blobPath: string;
  descriptor: Descriptor;
  diffId: string;
  cacheDir: string;
  /** Hears of each step of an unpack that is not served from the cache. */
  onProgress?: (progress: LayerProgress) => void;
}

/**
 * A layer while it unpacks, for work that starts before it is done
 * (build/speculate.ts): what is indexed so far and how much of the tar can be
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
  /** No more entries will come (the tar may still be renamed later). */
  indexed: boolean;
}

/** Bumped whenever the index layout changes, so old cache files are redone. */
const INDEX_FORMAT = 1;

interface StoredIndex {
  format: number;
  diffId: string;
  tarSize: number;
  entries: (Omit<LayerEntry, 'xattrs'> & { xattrs?: Record<string, string> })[];
}

/** Verifies, decompresses and indexes a layer, or returns its cached result. */
export async function unpackLayer(options: UnpackLayerOptions): Promise<UnpackedLayer> {
  const { descriptor, diffId, cacheDir } = options;
  digestHex(descriptor.digest, `digest of layer ${descriptor.digest}`);
  const base = join(resolve(cacheDir), 'layers', 'sha256', digestHex(diffId, `diff_id of layer ${descriptor.digest}`));
  const tarPath = `${base}.tar`;
  const indexPath = `${base}.json`;
  const cached = await readCachedIndex(tarPath, indexPath, diffId);
  if (cached !== undefined) return { diffId, tarPath, entries: cached };
  const { entries, tarSize } = await writeAtomically(tarPath, (temporary) => decompressAndIndex(options, tarPath, temporary));
  await writeFileAtomically(indexPath, JSON.stringify(storedIndex(diffId, tarSize, entries)));
  return { diffId, tarPath, entries };
}

/** The stored index, or undefined when it is missing or does not match its tar. */
async function readCachedIndex(tarPath: string, indexPath: string, diffId: string): Promise<LayerEntry[] | undefined> {
  let stored: StoredIndex;
  let tarSize: number;
  try {
    stored = JSON.parse(await readFile(indexPath, 'utf8')) as StoredIndex;
    tarSize = (await stat(tarPath)).size;
  } catch {
    return undefined; // not cached yet, or damaged: unpack again
  }
  if (stored.format !== INDEX_FORMAT || stored.diffId !== diffId || stored.tarSize !== tarSize) return undefined;
  return stored.entries.map(({ xattrs, ...entry }) =>
    xattrs === undefined ? entry : { ...entry, xattrs: mapValues(xattrs, (value) => Buffer.from(value, 'base64')) },
  );
}

function storedIndex(diffId: string, tarSize: number, entries: readonly LayerEntry[]): StoredIndex {
  return {
    format: INDEX_FORMAT,
    diffId,
    tarSize,
    entries: entries.map(({ xattrs, ...entry }) =>
      xattrs === undefined ? entry : { ...entry, xattrs: mapValues(xattrs, (value) => value.toString('base64')) },
    ),
  };
}

function mapValues<A, B>(record: Record<string, A>, map: (value: A) => B): Record<string, B> {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, map(value)]));
}

/** One pass over the blob: hash, decompress, hash, index, write to `temporary`. */
async function decompressAndIndex(
  { blobPath, descriptor, diffId, onProgress }: UnpackLayerOptions,
  tarPath: string,
  temporary: string,
): Promise<{ entries: LayerEntry[]; tarSize: number }> {
  const layer = `layer ${descriptor.digest}`;
  await verifyBlobSize(blobPath, descriptor);
  const encoding = detectCompression(await readMagic(blobPath));
  const compressed = new DigestingStream();
  const uncompressed = new DigestingStream();
  const indexer = new TarIndexer(layer);
  const progress: LayerProgress = { entries: indexer.entries, tarPath, partialPath: temporary, readableBytes: 0, indexed: false };
  const onReadable = (bytes: number) => {
    progress.readableBytes = bytes;
    onProgress?.(progress);
  };
  try {
    await pipeline([
      createReadStream(blobPath),
      compressed,
      createDecompressor(encoding),
      uncompressed,
      tarIndexStream(indexer),
      new SparseFileWriter(temporary, onProgress && onReadable),
    ]);
  } catch (error) {
    // A damaged blob fails to decompress or parse; its digest is the clearer report.
    await verifyBlobDigest(blobPath, descriptor);
    if (!isCorruptStreamError(error)) throw error;
    throw new InputError(`${layer} is corrupt: its ${encoding} stream cannot be decompressed (${error.message})`, {
      hint: 'the blob matches its digest, so the image itself is broken; rebuild or re-push it',
      cause: error,
    });
  }
  checkBlobDigest(descriptor, compressed.digest(), compressed.size);
  if (uncompressed.digest() !== diffId) {
    throw new VerificationError(
      `${layer}: its uncompressed content has digest ${uncompressed.digest()}, but the image config lists diff_id ${diffId}`,
      { hint: 'the image config does not match its layers; rebuild or re-push the image' },
    );
  }
  progress.indexed = true;
  onProgress?.(progress);
  return { entries: indexer.entries, tarSize: uncompressed.size };
}

/** The first four bytes of a file (fewer if it is shorter): enough to tell the codec. */
async function readMagic(path: string): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(4), 0, 4, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
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

/** A pass-through stage that hashes and counts what flows through it. */
class DigestingStream extends Transform {
  size = 0;
  private readonly hash: Hash = createHash('sha256');
  private result?: string;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  digest(): string {
    this.result ??= `sha256:${this.hash.digest('hex')}`;
    return this.result;
  }
}

/** Layers unpacked at once: decompression runs on the thread pool, so a few keep every core busy. */
const LAYER_CONCURRENCY = 3;

/**
 * Unpacks an image's layers (bottom to top, the order of `layers` and
 * `diffIds`), each as soon as `blobPath` makes its blob local.
 */
export function unpackImageLayers(
  layers: readonly Descriptor[],
  diffIds: readonly string[],
  blobPath: (descriptor: Descriptor, index: number) => Promise<string>,
  cacheDir: string,
  onUnpacked: (layer: UnpackedLayer, index: number) => void = () => {},
  onProgress?: (progress: LayerProgress, index: number) => void,
): Promise<UnpackedLayer[]> {
  return mapConcurrent(layers, LAYER_CONCURRENCY, async (descriptor, index) => {
    const layer = await unpackLayer({
      blobPath: await blobPath(descriptor, index),
      descriptor,
      diffId: diffIds[index]!,
      cacheDir,
      onProgress: onProgress && ((progress) => onProgress(progress, index)),
    });
    onUnpacked(layer, index);
    return layer;
  });
}
