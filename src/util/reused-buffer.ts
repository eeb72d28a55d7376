/**
 * One buffer kept from use to use and replaced only by a bigger one, so a
 * loop over similar-sized jobs (shards on a worker thread) allocates once.
 */
export class ReusedBuffer {
  #buffer = Buffer.alloc(0);

  /** The first `size` bytes of the buffer, uninitialised: valid until the next call. */
  take(size: number): Buffer {
    if (this.#buffer.length < size) this.#buffer = Buffer.allocUnsafe(size);
    return this.#buffer.subarray(0, size);
  }
}
