/**
 * Decoding of concatenated zstd frames. Node's zstd decoder (Node 24) silently
 * stops after the first frame or fails, depending on where chunks split, so we
 * find frame boundaries from the frame and block headers (RFC 8878) and give
 * each frame a fresh decoder.
 */
import { once } from 'node:events';
import { Transform, type TransformCallback } from 'node:stream';
import { finished } from 'node:stream/promises';
import zlib from 'node:zlib';
import { CorruptStreamError } from './errors.ts';

/**
 * Output buffer of the codecs: far larger than zlib's 16 KiB default, so few
 * chunks flow through each stream stage and few thread-pool round trips are
 * made (with ISA-L's inflate, 1 MiB measured a little faster than 256 KiB).
 */
export const OUTPUT_CHUNK = 1024 * 1024;

const ZSTD_MAGIC = 0xfd2fb528;
/** Skippable frames use magics 0x184D2A50 to 0x184D2A5F. */
const SKIPPABLE_MAGIC = 0x184d2a50;
const SKIPPABLE_MASK = 0xfffffff0;
const CHECKSUM_SIZE = 4;
const BLOCK_TYPE_RLE = 1;
const BLOCK_TYPE_RESERVED = 3;

/** A header field to collect and parse, bytes to pass over, or the end of a frame. */
type Step =
  | { kind: 'magic' }
  | { kind: 'descriptor' }
  | { kind: 'skippableSize' }
  | { kind: 'blockHeader'; checksum: boolean }
  | { kind: 'skip'; bytes: number; then: Step }
  | { kind: 'frameEnd' };
type FieldStep = Extract<Step, { kind: keyof typeof FIELD_SIZES }>;

const FIELD_SIZES = { magic: 4, descriptor: 1, skippableSize: 4, blockHeader: 3 } as const;
const FRAME_END: Step = { kind: 'frameEnd' };

/** Walks a zstd stream chunk by chunk and reports where frames end. */
export class ZstdFrameScanner {
  #step: Step = { kind: 'magic' };
  #field = Buffer.alloc(0);
  /** Stream offset of the chunk being scanned. */
  #chunkOffset = 0;

  /** True between frames, where the stream may end. */
  get atFrameBoundary(): boolean {
    return this.#step.kind === 'magic' && this.#field.length === 0;
  }

  /** Offsets within `chunk` just after the last byte of each frame that ends in it. */
  frameEnds(chunk: Buffer): number[] {
    const ends: number[] = [];
    for (let position = 0; position < chunk.length; ) {
      position += this.#advance(chunk, position);
      if (this.#step.kind === 'frameEnd') {
        ends.push(position);
        this.#step = { kind: 'magic' };
      }
    }
    this.#chunkOffset += chunk.length;
    return ends;
  }

  /** Consumes bytes of the current step from `chunk` at `position`; returns how many. */
  #advance(chunk: Buffer, position: number): number {
    const step = this.#step;
    if (step.kind === 'skip') {
      const taken = Math.min(step.bytes, chunk.length - position);
      this.#step = taken === step.bytes ? settle(step.then) : { ...step, bytes: step.bytes - taken };
      return taken;
    }
    if (step.kind === 'frameEnd') return 0;
    const size = FIELD_SIZES[step.kind];
    const piece = chunk.subarray(position, position + size - this.#field.length);
    this.#field = Buffer.concat([this.#field, piece]);
    if (this.#field.length === size) {
      this.#step = settle(this.#parse(step, this.#field, this.#chunkOffset + position + piece.length - size));
      this.#field = Buffer.alloc(0);
    }
    return piece.length;
  }

  #parse(step: FieldStep, field: Buffer, offset: number): Step {
    switch (step.kind) {
      case 'magic':
        return afterMagic(field.readUInt32LE(0), offset);
      case 'descriptor':
        return afterDescriptor(field[0]!);
      case 'skippableSize':
        return { kind: 'skip', bytes: field.readUInt32LE(0), then: FRAME_END };
      case 'blockHeader':
        return afterBlockHeader(field.readUIntLE(0, 3), step.checksum, offset);
    }
  }
}

/** Zero-length skips resolve at once, so a frame end is seen as soon as its last byte is. */
function settle(step: Step): Step {
  return step.kind === 'skip' && step.bytes === 0 ? settle(step.then) : step;
}

function afterMagic(magic: number, offset: number): Step {
  if (magic === ZSTD_MAGIC) return { kind: 'descriptor' };
  if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) return { kind: 'skippableSize' };
  throw new CorruptStreamError(`not a zstd frame at byte offset ${offset}: unknown magic 0x${magic.toString(16)}`);
}

/** The rest of the frame header (window, dictionary id, content size), then the first block. */
function afterDescriptor(descriptor: number): Step {
  const singleSegment = (descriptor & 0x20) !== 0;
  const checksum = (descriptor & 0x04) !== 0;
  const windowSize = singleSegment ? 0 : 1;
  const dictionaryIdSize = [0, 1, 2, 4][descriptor & 3]!;
  const contentSizeSize = [singleSegment ? 1 : 0, 2, 4, 8][descriptor >> 6]!;
  return { kind: 'skip', bytes: windowSize + dictionaryIdSize + contentSizeSize, then: { kind: 'blockHeader', checksum } };
}

function afterBlockHeader(header: number, checksum: boolean, offset: number): Step {
  const last = (header & 1) === 1;
  const type = (header >> 1) & 3;
  if (type === BLOCK_TYPE_RESERVED) throw new CorruptStreamError(`corrupt zstd block header at byte offset ${offset}`);
  const afterBlock: Step = !last
    ? { kind: 'blockHeader', checksum }
    : checksum
      ? { kind: 'skip', bytes: CHECKSUM_SIZE, then: FRAME_END }
      : FRAME_END;
  // An RLE block stores one byte, repeated Block_Size times when decoded.
  return { kind: 'skip', bytes: type === BLOCK_TYPE_RLE ? 1 : header >>> 3, then: afterBlock };
}

/** Decodes any number of back-to-back zstd frames as one stream. */
export class ZstdFramesDecompress extends Transform {
  readonly #scanner = new ZstdFrameScanner();
  #frame?: zlib.ZstdDecompress;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#feed(chunk).then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#frame?.destroy();
    callback(error);
  }

  override _flush(callback: TransformCallback): void {
    if (!this.#scanner.atFrameBoundary) {
      callback(new CorruptStreamError('zstd data is truncated: it ends inside a frame'));
      return;
    }
    callback();
  }

  async #feed(chunk: Buffer): Promise<void> {
    let start = 0;
    for (const end of this.#scanner.frameEnds(chunk)) {
      await this.#write(chunk.subarray(start, end));
      await this.#endFrame();
      start = end;
    }
    if (start < chunk.length) await this.#write(chunk.subarray(start));
  }

  async #write(bytes: Buffer): Promise<void> {
    const frame = (this.#frame ??= this.#openFrame());
    if (!frame.write(bytes)) await once(frame, 'drain');
  }

  async #endFrame(): Promise<void> {
    const frame = this.#frame;
    if (frame === undefined) return;
    this.#frame = undefined;
    frame.end();
    await finished(frame);
  }

  #openFrame(): zlib.ZstdDecompress {
    const frame = zlib.createZstdDecompress({ chunkSize: OUTPUT_CHUNK });
    frame.on('data', (data: Buffer) => this.push(data));
    frame.on('error', (error) => this.destroy(error));
    return frame;
  }
}
