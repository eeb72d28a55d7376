/**
 * Reads newc (and crc) cpio archives from uncompressed bytes, several of them
 * back to back as the kernel does: NUL bytes between archives are skipped and
 * each archive must start 4-aligned. Format errors name the byte offset.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../errors.ts';
import { CRC_MAGIC, decodeHeaderFields, HEADER_SIZE, NEWC_MAGIC, paddingFor, TRAILER_NAME } from './newc.ts';

export interface CpioRecord {
  /** Latin1 byte string, exactly as stored (without the NUL). */
  name: string;
  ino: number;
  /** Type bits and permission bits, as st_mode. */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  size: number;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
  /** The contents, with `data: 'buffer'`. */
  data?: Buffer;
  /** Hex SHA-256 of the contents, with `data: 'sha256'`. */
  sha256?: string;
}

/** What to do with each entry's contents: keep them (default), hash them, or skip them. */
export type DataMode = 'buffer' | 'sha256' | 'skip';

export interface ReadOptions {
  data?: DataMode;
}

/** Yields every entry of every archive in `input`, trailers left out. */
export async function* readNewcArchive(
  input: AsyncIterable<Uint8Array>,
  options: ReadOptions = {},
): AsyncGenerator<CpioRecord> {
  const source = new ByteSource(input);
  const dataMode = options.data ?? 'buffer';
  let archives = 0;
  while (await source.skipNulBytes()) {
    if (source.offset % 4 !== 0) {
      throw new InputError(`cpio archive at byte offset ${source.offset} does not start 4-byte aligned`);
    }
    archives += 1;
    yield* readOneArchive(source, dataMode);
  }
  if (archives === 0) throw new InputError('no cpio archive found: the input is empty or only NUL bytes');
}

async function* readOneArchive(source: ByteSource, dataMode: DataMode): AsyncGenerator<CpioRecord> {
  for (;;) {
    const start = source.offset;
    const header = await source.take(HEADER_SIZE, 'an entry header');
    const magic = header.toString('latin1', 0, NEWC_MAGIC.length);
    if (magic !== NEWC_MAGIC && magic !== CRC_MAGIC) {
      throw new InputError(
        `bad cpio magic "${printable(magic)}" at byte offset ${start}: expected ${NEWC_MAGIC} (newc) or ${CRC_MAGIC}`,
      );
    }
    const fields = decodeHeaderFields(header);
    if ('badField' in fields) {
      throw new InputError(`cpio header at byte offset ${start}: field ${printable(fields.badField)} is not 8 hex digits`);
    }
    const name = await readName(source, fields.namesize, start);
    if (name === TRAILER_NAME) {
      await source.skip(fields.filesize + paddingFor(fields.filesize), 'the trailer');
      return;
    }
    const record: CpioRecord = {
      name,
      ino: fields.ino,
      mode: fields.mode,
      uid: fields.uid,
      gid: fields.gid,
      nlink: fields.nlink,
      mtime: fields.mtime,
      size: fields.filesize,
      devMajor: fields.devMajor,
      devMinor: fields.devMinor,
      rdevMajor: fields.rdevMajor,
      rdevMinor: fields.rdevMinor,
    };
    await readData(source, record, dataMode);
    yield record;
  }
}

async function readName(source: ByteSource, namesize: number, headerOffset: number): Promise<string> {
  if (namesize === 0) throw new InputError(`cpio header at byte offset ${headerOffset} has namesize 0`);
  const name = await source.take(namesize, 'an entry name');
  if (name[namesize - 1] !== 0) {
    throw new InputError(`cpio entry name at byte offset ${headerOffset + HEADER_SIZE} is not NUL-terminated`);
  }
  await source.skip(paddingFor(HEADER_SIZE + namesize), 'name padding');
  return name.toString('latin1', 0, namesize - 1);
}

async function readData(source: ByteSource, record: CpioRecord, dataMode: DataMode): Promise<void> {
  const what = `the data of "${record.name}"`;
  if (dataMode === 'buffer') {
    const pieces: Buffer[] = [];
    for await (const piece of source.pieces(record.size, what)) pieces.push(piece);
    record.data = Buffer.concat(pieces, record.size);
  } else if (dataMode === 'sha256') {
    const hash = createHash('sha256');
    for await (const piece of source.pieces(record.size, what)) hash.update(piece);
    record.sha256 = hash.digest('hex');
  } else {
    await source.skip(record.size, what);
  }
  await source.skip(paddingFor(record.size), `the padding after ${what}`);
}

function printable(text: string): string {
  return JSON.stringify(text).slice(1, -1);
}

/** Pull-based byte reader over an async iterable of chunks, tracking the stream offset. */
class ByteSource {
  readonly #chunks: AsyncIterator<Uint8Array>;
  #buffer: Buffer = Buffer.alloc(0);
  #ended = false;
  /** Stream offset of the first unread byte. */
  offset = 0;

  constructor(input: AsyncIterable<Uint8Array>) {
    this.#chunks = input[Symbol.asyncIterator]();
  }

  /** Skips NUL bytes; false when the input ends first. */
  async skipNulBytes(): Promise<boolean> {
    for (;;) {
      if (!(await this.#fill(1))) return false;
      const first = this.#buffer.findIndex((byte) => byte !== 0);
      this.#consume(first < 0 ? this.#buffer.length : first);
      if (first >= 0) return true;
    }
  }

  /** Exactly `length` bytes, or an error naming what was cut short. */
  async take(length: number, what: string): Promise<Buffer> {
    if (!(await this.#fill(length))) this.#truncated(what, length);
    const bytes = this.#buffer.subarray(0, length);
    this.#consume(length);
    return bytes;
  }

  /** `length` bytes as they arrive, without gathering them. */
  async *pieces(length: number, what: string): AsyncGenerator<Buffer> {
    for (let left = length; left > 0; ) {
      if (!(await this.#fill(1))) this.#truncated(what, left);
      const piece = this.#buffer.subarray(0, Math.min(left, this.#buffer.length));
      this.#consume(piece.length);
      left -= piece.length;
      yield piece;
    }
  }

  async skip(length: number, what: string): Promise<void> {
    for await (const _piece of this.pieces(length, what));
  }

  #truncated(what: string, missing: number): never {
    throw new InputError(
      `cpio archive truncated at byte offset ${this.offset + this.#buffer.length}: ${missing - this.#buffer.length} more bytes expected for ${what}`,
    );
  }

  #consume(length: number): void {
    this.#buffer = this.#buffer.subarray(length);
    this.offset += length;
  }

  /** Buffers at least `length` bytes; false when the input ends first. */
  async #fill(length: number): Promise<boolean> {
    while (this.#buffer.length < length && !this.#ended) {
      const next = await this.#chunks.next();
      if (next.done) {
        this.#ended = true;
        break;
      }
      const chunk = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    }
    return this.#buffer.length >= length;
  }
}
