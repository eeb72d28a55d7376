/**
 * gunzip through ISA-L by rampack's native addon (native/inflate.c, built by
 * scripts/build-native.ts into dist/native/inflate.node): a fifth faster
 * than node:zlib's inflate, and streaming. The addon is optional:
 * without it, or with RAMPACK_INFLATE=zlib, gunzip is node:zlib's. Both give
 * the same bytes, and both refuse the same damaged streams.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { addonLoader, addonPath, type LoadedAddon, zlibForced } from './addon.ts';
import { CorruptStreamError } from './errors.ts';
import { OUTPUT_CHUNK } from './zstd-frames.ts';

declare const inflaterHandle: unique symbol;
/** The decoder state of one gzip stream, owned by the addon. */
export type InflaterHandle = { readonly [inflaterHandle]: true };

export type InflateCallback = (error: Error | null, consumed: number, produced: number, memberEnded: boolean) => void;

/** What native/inflate.c exports. */
export interface NativeInflate {
  createInflater(): InflaterHandle;
  /**
   * Decodes from `input` into `output` on the thread pool, one call at a time
   * per handle; calls back once the input is used up, the output is full or
   * a gzip member ended (the handle then expects the next member's header).
   */
  inflate(handle: InflaterHandle, input: Uint8Array, output: Uint8Array, callback: InflateCallback): void;
  /** Frees the decoder state (once a call in flight is done); the handle is unusable after. */
  close(handle: InflaterHandle): void;
  version(): string;
}

export const INFLATE_ADDON_PATH = addonPath('inflate.node');

/** The addon, loaded once per thread, or why not. */
export const loadNativeInflate = addonLoader<NativeInflate>(INFLATE_ADDON_PATH, 'ISA-L', 'apt-get install gcc libisal-dev');

/** The addon for gunzip, unless it is missing or RAMPACK_INFLATE=zlib; else why not. */
export function nativeInflate(): LoadedAddon<NativeInflate> {
  return zlibForced('RAMPACK_INFLATE', 'ISA-L', 'gunzip') ? { unavailable: 'RAMPACK_INFLATE=zlib' } : loadNativeInflate();
}

/** Which gunzip runs, for the log: ISA-L's version, or node:zlib's and why not ISA-L. */
export function describeGunzip(): string {
  const { addon, unavailable } = nativeInflate();
  return addon ? `ISA-L ${addon.version()}` : `node:zlib (zlib ${process.versions.zlib}; ${unavailable})`;
}

interface Inflated {
  consumed: number;
  produced: number;
  memberEnded: boolean;
}

const NO_INPUT = Buffer.alloc(0);

/**
 * gunzip through ISA-L, behaving as node:zlib's Gunzip: back-to-back members
 * come out as one stream, and a NUL byte where the next member would start
 * ends the stream there (padding: whatever follows is ignored). Output comes
 * in full OUTPUT_CHUNK buffers (the last one shorter); a reader that falls
 * behind pauses decoding, even within one input chunk.
 */
export class IsalGunzip extends Transform {
  readonly #addon: NativeInflate;
  readonly #handle: InflaterHandle;
  /** The output chunk being filled, and how much of it is. */
  #output: Buffer | undefined;
  #filled = 0;
  /** The last call filled its output, so ISA-L may hold more for the next. */
  #outputWasFull = false;
  #membersEnded = 0;
  /** Bytes of a member that has not ended yet were consumed. */
  #inMember = false;
  /** A NUL byte followed a member: the rest of the stream is ignored. */
  #padding = false;
  /** Compressed bytes consumed so far, and where the current member started. */
  #consumed = 0;
  #memberStart = 0;
  /** Resumes decoding once the reader wants more. */
  #onRead: (() => void) | undefined;

  constructor(addon: NativeInflate) {
    super();
    this.#addon = addon;
    this.#handle = addon.createInflater();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#decode(chunk).then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.#finish().then(() => callback(), callback);
  }

  override _read(size: number): void {
    const onRead = this.#onRead;
    this.#onRead = undefined;
    onRead?.();
    super._read(size);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#addon.close(this.#handle);
    callback(error);
  }

  get #betweenMembers(): boolean {
    return this.#membersEnded > 0 && !this.#inMember;
  }

  /** Feeds `input` through the decoder, handing on each output chunk as it fills. */
  async #decode(input: Buffer): Promise<void> {
    let rest = input;
    while (!this.destroyed && !this.#padding && (rest.length > 0 || this.#outputWasFull)) {
      if (this.#betweenMembers && rest[0] === 0) {
        this.#padding = true;
        return;
      }
      const output = (this.#output ??= Buffer.allocUnsafe(OUTPUT_CHUNK)).subarray(this.#filled);
      const { consumed, produced, memberEnded } = await this.#inflate(rest, output);
      if (consumed === 0 && produced === 0 && !memberEnded && rest.length > 0) {
        throw new CorruptStreamError(`ISA-L made no progress in gzip member ${this.#membersEnded + 1} (from byte ${this.#memberStart})`);
      }
      rest = rest.subarray(consumed);
      this.#account(consumed, memberEnded);
      this.#filled += produced;
      this.#outputWasFull = produced === output.length;
      if (this.#outputWasFull && !this.destroyed) await this.#handOnOutput();
    }
  }

  #inflate(input: Buffer, output: Buffer): Promise<Inflated> {
    return new Promise((resolve, reject) => {
      this.#addon.inflate(this.#handle, input, output, (error, consumed, produced, memberEnded) => {
        if (error) reject(new CorruptStreamError(`${error.message} (gzip member ${this.#membersEnded + 1}, from byte ${this.#memberStart})`));
        else resolve({ consumed, produced, memberEnded });
      });
    });
  }

  #account(consumed: number, memberEnded: boolean): void {
    this.#consumed += consumed;
    if (consumed > 0) this.#inMember = true;
    if (!memberEnded) return;
    this.#inMember = false;
    this.#membersEnded++;
    this.#memberStart = this.#consumed;
  }

  /** Pushes the full output chunk; waits while the reader has enough. */
  async #handOnOutput(): Promise<void> {
    const wantsMore = this.push(this.#output);
    this.#output = undefined;
    this.#filled = 0;
    if (!wantsMore) await new Promise<void>((resolve) => (this.#onRead = resolve));
  }

  /** Drains what ISA-L still holds; the stream must end between members. */
  async #finish(): Promise<void> {
    await this.#decode(NO_INPUT);
    if (this.#inMember) {
      throw new CorruptStreamError(`gzip data is truncated: it ends inside member ${this.#membersEnded + 1} (from byte ${this.#memberStart})`);
    }
    if (this.#membersEnded === 0) throw new CorruptStreamError('gzip data is truncated: the stream is empty');
    if (this.#filled > 0) this.push(this.#output!.subarray(0, this.#filled));
  }
}
