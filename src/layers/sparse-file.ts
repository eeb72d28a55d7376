/**
 * A file sink that leaves holes where the stream has only zeros. Unpacked
 * layers land in the layer cache this way, so a layer with a huge zero-filled
 * file (a preallocated database, a disk image) costs no disk space for it.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';

/** Zero runs shorter than this are written: a hole saves nothing below a filesystem block. */
const HOLE_UNIT = 4096;
const ZEROS = Buffer.alloc(HOLE_UNIT);

export class SparseFileWriter extends Writable {
  readonly #path: string;
  #handle?: FileHandle;
  /** Bytes of the stream seen so far: where the next chunk goes in the file. */
  #position = 0;
  readonly #onReadable?: (bytes: number) => void;

  /** `onReadable` hears how many leading bytes of the file can be read back (holes read as zeros). */
  constructor(path: string, onReadable?: (bytes: number) => void) {
    super();
    this.#path = path;
    this.#onReadable = onReadable;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.#path, 'w').then(
      (handle) => {
        this.#handle = handle;
        callback();
      },
      (error: Error) => callback(error),
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#writeChunk(chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    // Trailing holes need the size set explicitly; then the file is complete.
    this.#handle!.truncate(this.#position).then(() => {
      this.#onReadable?.(this.#position);
      callback();
    }, callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.#handle;
    this.#handle = undefined;
    if (handle === undefined) callback(error);
    else handle.close().then(() => callback(error), (closeError: Error) => callback(error ?? closeError));
  }

  /** Writes the chunk's data runs and skips its whole zero blocks. */
  async #writeChunk(chunk: Buffer): Promise<void> {
    let dataStart = 0;
    for (let at = 0; at < chunk.length; at += HOLE_UNIT) {
      const unit = chunk.subarray(at, at + HOLE_UNIT);
      if (unit.length < HOLE_UNIT || !unit.equals(ZEROS)) continue;
      await this.#writeRange(chunk, dataStart, at);
      dataStart = at + HOLE_UNIT;
    }
    await this.#writeRange(chunk, dataStart, chunk.length);
    // A trailing zero run is not in the file yet: a read there would come up short.
    if (dataStart < chunk.length) this.#onReadable?.(this.#position + chunk.length);
    this.#position += chunk.length;
  }

  async #writeRange(chunk: Buffer, start: number, end: number): Promise<void> {
    for (let at = start; at < end; ) {
      const { bytesWritten } = await this.#handle!.write(chunk, at, end - at, this.#position + at);
      at += bytesWritten;
    }
  }
}
