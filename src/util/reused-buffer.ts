/**
 * One buffer kept from use to use and replaced only by a bigger one, so a
 * loop over similar-sized jobs (shards on a worker thread) allocates once.
 */
export class ReusedBuffer {
  #buffer = Buffer.alloc(0);

  /** The first `size` bytes of the buffer, uninitialised: valid until the next call. */
  take(size: number): Buffer {
    if (this.#buffer.length < size) {
      releaseNow(this.#buffer);
      this.#buffer = Buffer.allocUnsafe(size);
    }
    return this.#buffer.subarray(0, size);
  }

  /** Whether `view` is (part of) the kept buffer. */
  holds(view: Buffer): boolean {
    return view.buffer === this.#buffer.buffer;
  }
}

/**
 * Frees a large buffer's memory now instead of at the next full garbage
 * collection, which, with the old generation's floor the launcher sets, may
 * be far off while tens of MB of dead shard buffers pile up. Only for a
 * buffer that owns its memory from the start (not a slice of Node's shared
 * pool) and that nothing else uses any more: every view of it becomes empty.
 */
export function releaseNow(buffer: Buffer): void {
  if (buffer.byteOffset === 0 && buffer.buffer.byteLength > 64 * 1024 && !(buffer.buffer instanceof SharedArrayBuffer)) {
    buffer.buffer.transfer(0);
  }
}
