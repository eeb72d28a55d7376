/**
 * Streams a tree as one newc cpio archive, as the kernel unpacks it: parents
 * before children, hard links as one inode, the archive padded to 512 bytes
 * after TRAILER!!! as gen_init_cpio does. Every check runs before the first
 * byte is produced, so a bad tree fails without a half-written archive.
 */
import type { Hash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { Readable } from 'node:stream';
import { InputError } from '../errors.ts';
import { dataSize, displayPath, parentPath, rangePieces, storedSize, type EntryType, type FileRange, type TreeEntry } from '../tree/entry.ts';
import { encodeHeader, HEADER_SIZE, MAX_NAME_SIZE, MAX_U32, paddingFor, TRAILER_NAME, TYPE_BITS, writeHeader, type NewcHeader } from './newc.ts';

export interface NewcOptions {
  /** Upper bound for mtimes (e.g. SOURCE_DATE_EPOCH): later ones are lowered to it. */
  clampMtime?: number;
  /**
   * Directories that archives before this one in the same initramfs create:
   * entries may sit in them without repeating them here.
   */
  presentDirectories?: ReadonlySet<string>;
  /**
   * Files to read instead of the ones data ranges name, while those are still
   * being written under a temporary name that is renamed into place when done:
   * if the temporary name is gone, the named file is read.
   */
  partialFiles?: ReadonlyMap<string, string>;
}

export interface ArchiveStats {
  /** Entries written so far, the trailer not counted. */
  entries: number;
  /** Uncompressed bytes produced so far; final once the stream has ended. */
  bytes: number;
}

/** The archive bytes, plus counters that are complete when the stream ends. */
export type NewcStream = Readable & { readonly stats: ArchiveStats };

/** Positional reads from layer files go in chunks of this size. */
const READ_CHUNK = 1024 * 1024;
/** Headers and small files are gathered into chunks of at least this size. */
const BATCH_BYTES = 64 * 1024;
/** gen_init_cpio pads the whole archive to this after the trailer. */
const ARCHIVE_ALIGNMENT = 512;
const ZEROS = Buffer.alloc(ARCHIVE_ALIGNMENT);
/** What a sparse file's holes read as; nothing writes into it. */
const ZERO_CHUNK = Buffer.alloc(READ_CHUNK);

type Header = Omit<NewcHeader, 'namesize' | 'check'>;

/** An entry as it will be written: header decided, data (if it carries any) attached. */
interface PlannedRecord {
  readonly name: string;
  readonly header: Header;
  readonly data?: Buffer | FileRange;
}

/** Hard-link group: the members share an inode and the last one carries the data. */
interface LinkGroup {
  members: number;
  lastIndex: number;
  type: EntryType;
  data?: Buffer | FileRange;
  ino?: number;
}

/**
 * Archives `entries`, which must already be in final order (every parent
 * directory before its children). Throws InputError naming the path for
 * anything newc or the kernel cannot represent.
 */
export function newcArchive(entries: Iterable<TreeEntry>, options: NewcOptions = {}): NewcStream {
  return planNewcArchive(entries, options).stream();
}

/** An archive checked and laid out, not yet written: its exact size, and two ways to write it. */
export interface NewcPlan {
  /** Bytes of the whole archive, trailer and final padding included. */
  readonly size: number;
  /** The archive as a stream, read from the layer files as it is consumed. */
  stream(): NewcStream;
  /** Writes the archive into `target` (at least `size` bytes), file data read straight into it. */
  writeInto(target: Buffer): void;
  /**
   * The archive in pieces written into `scratch` (file data read straight
   * into it), each a view of `scratch` that is valid only until the next is
   * taken: for a consumer that is done with one before asking for the next,
   * so no memory is allocated per chunk.
   */
  chunks(scratch: Buffer): Iterable<Buffer>;
  /**
   * Feeds `hash` what the archive is made of: every header exactly as it will
   * be written (name, inode numbers, modes, sizes: all the writer decided),
   * then each entry's data: as bytes when in memory, and for a range of a
   * file as `fileIdentity` names the file plus the range's offset, size and
   * sparse runs. Two plans that feed the same are the same archive, as long
   * as equal file identities name files of equal bytes.
   */
  identify(hash: Hash, fileIdentity: (file: string) => string): void;
}

/**
 * Tags before each entry's data in identify(), so in-memory bytes never read as a range identity; a NUL
 * ends a range identity (in-memory data needs none: the header gives its length).
 */
const DATA_IN_MEMORY = 0;
const DATA_IN_FILE = 1;

/**
 * What identify() feeds a hash, gathered into one buffer: one hash update
 * per batch rather than per entry, and no string made per header (keys are
 * taken for every shard of every prediction round).
 */
class HashBatch {
  readonly #hash: Hash;
  /** A batch is flushed once past BATCH_BYTES, so one more header of the longest name (or a number) always fits. */
  readonly #buffer = Buffer.allocUnsafe(BATCH_BYTES + HEADER_SIZE + MAX_NAME_SIZE + 8);
  #used = 0;

  constructor(hash: Hash) {
    this.#hash = hash;
  }

  header(header: Header, name: string): this {
    this.#used = writeHeader(this.#buffer, this.#used, header, name);
    return this.#flushIfFull();
  }

  byte(value: number): this {
    this.#buffer[this.#used++] = value;
    return this.#flushIfFull();
  }

  text(value: string): this {
    if (this.#used + Buffer.byteLength(value) > this.#buffer.length) this.flush().#hash.update(value);
    else this.#used += this.#buffer.write(value, this.#used);
    return this.#flushIfFull();
  }

  /** Offset, size and sparse runs as 64-bit numbers: no text made per file. */
  range({ offset, size, sparse }: FileRange): this {
    this.#number(offset);
    this.#number(size);
    this.#number(sparse?.length ?? 0);
    for (const run of sparse ?? []) {
      this.#number(run.offset);
      this.#number(run.size);
    }
    return this;
  }

  #number(value: number): void {
    this.#buffer.writeDoubleLE(value, this.#used);
    this.#used += 8;
    this.#flushIfFull();
  }

  bytes(value: Buffer): this {
    this.flush().#hash.update(value);
    return this;
  }

  flush(): this {
    this.#hash.update(this.#buffer.subarray(0, this.#used));
    this.#used = 0;
    return this;
  }

  #flushIfFull(): this {
    return this.#used >= BATCH_BYTES ? this.flush() : this;
  }
}

export function planNewcArchive(entries: Iterable<TreeEntry>, options: NewcOptions = {}): NewcPlan {
  const records = planArchive([...entries], options);
  const bytes = records.reduce((sum, record) => sum + recordSize(record), 0) + recordSize({ name: TRAILER_NAME, header: TRAILER_HEADER });
  const size = bytes + paddingFor(bytes, ARCHIVE_ALIGNMENT);
  const chunks = (scratch: Buffer) => filledChunks(records, scratch, options.partialFiles);
  return {
    size,
    stream() {
      const stats: ArchiveStats = { entries: 0, bytes: 0 };
      return Object.assign(Readable.from(streamChunks(records, stats, options.partialFiles), { objectMode: false }), { stats });
    },
    writeInto(target) {
      // A scratch buffer of exactly the archive's size is filled in one piece.
      for (const piece of chunks(target.subarray(0, size))) void piece;
    },
    chunks,
    identify(hash, fileIdentity) {
      const batch = new HashBatch(hash);
      for (const { name, header, data } of records) {
        batch.header(header, name);
        if (Buffer.isBuffer(data)) batch.byte(DATA_IN_MEMORY).bytes(data);
        else if (data !== undefined) batch.byte(DATA_IN_FILE).text(fileIdentity(data.file)).byte(0).range(data);
      }
      batch.flush();
    },
  };
}

function recordSize({ name, header }: Pick<PlannedRecord, 'name' | 'header'>): number {
  const headerAndName = HEADER_SIZE + Buffer.byteLength(name, 'latin1') + 1;
  return headerAndName + paddingFor(headerAndName) + header.filesize + paddingFor(header.filesize);
}

function planArchive(entries: TreeEntry[], options: NewcOptions): PlannedRecord[] {
  const groups = linkGroups(entries);
  // Not a copy of presentDirectories: shard keys plan shard after shard against all directories before them.
  const ownDirectories = new Set<string>();
  const isDirectory = (path: string) => ownDirectories.has(path) || options.presentDirectories?.has(path) === true;
  let nextIno = 1;
  return entries.map((entry, index) => {
    checkEntry(entry, isDirectory);
    if (entry.type === 'dir') ownDirectories.add(entry.path);
    const group = isLinked(entry) ? groups.get(entry.inode) : undefined;
    if (group !== undefined) group.ino ??= nextIno++;
    const data = group === undefined ? ownData(entry) : index === group.lastIndex ? group.data : undefined;
    const header: Header = {
      ino: group?.ino ?? nextIno++,
      mode: TYPE_BITS[entry.type] | (entry.mode & 0o7777),
      uid: entry.uid,
      gid: entry.gid,
      nlink: group?.members ?? (entry.type === 'dir' ? 2 : 1),
      mtime: archiveMtime(entry, options.clampMtime),
      filesize: data === undefined ? 0 : Buffer.isBuffer(data) ? data.length : data.size,
      devMajor: 0,
      devMinor: 0,
      rdevMajor: entry.devMajor ?? 0,
      rdevMinor: entry.devMinor ?? 0,
    };
    return { name: entry.path, header, data };
  });
}

/** Directories and symlinks are never hard-linked by the kernel; the key is ignored for them. */
function isLinked(entry: TreeEntry): entry is TreeEntry & { inode: number } {
  return entry.inode !== undefined && entry.type !== 'dir' && entry.type !== 'symlink';
}

function linkGroups(entries: TreeEntry[]): Map<number, LinkGroup> {
  const groups = new Map<number, LinkGroup>();
  entries.forEach((entry, index) => {
    if (!isLinked(entry)) return;
    const group = groups.get(entry.inode);
    if (group === undefined) {
      groups.set(entry.inode, { members: 1, lastIndex: index, type: entry.type, data: entry.data });
      return;
    }
    if (group.type !== entry.type) {
      throw new InputError(
        `"${displayPath(entry.path)}" is a hard link of a ${group.type} but is itself a ${entry.type}`,
      );
    }
    group.members += 1;
    group.lastIndex = index;
    group.data = entry.data ?? group.data;
  });
  return groups;
}

function ownData(entry: TreeEntry): Buffer | FileRange | undefined {
  if (entry.type === 'symlink') return Buffer.from(entry.linkTarget ?? '', 'latin1');
  return entry.type === 'file' ? entry.data : undefined;
}

/** Byte strings only: one char per byte, and no NUL since names are NUL-terminated. */
const BYTE_STRING = /^[\x01-\xff]+$/;

function checkEntry(entry: TreeEntry, isDirectory: (path: string) => boolean): void {
  if (!BYTE_STRING.test(entry.path)) {
    throw new InputError(`path "${displayPath(entry.path)}" cannot be archived: it is empty or not a latin1 byte string without NUL`);
  }
  if (entry.path === TRAILER_NAME) {
    throw new InputError(`"${displayPath(entry.path)}" cannot be archived: the name is the cpio end-of-archive marker`);
  }
  // The kernel skips longer names and symlink targets without a word (PATH_MAX).
  if (entry.path.length + 1 > MAX_NAME_SIZE) {
    throw new InputError(
      `path "${abbreviated(displayPath(entry.path))}" is ${entry.path.length} bytes long: the kernel unpacks at most ${MAX_NAME_SIZE - 1} (PATH_MAX)`,
      { hint: 'remove the deep tree from the image (e.g. with the recipe\'s remove patterns)' },
    );
  }
  const parent = parentPath(entry.path);
  if (parent !== '' && !isDirectory(parent)) {
    throw new InputError(
      `"${displayPath(entry.path)}" comes before its parent directory "${displayPath(parent)}" (or the parent is not a directory)`,
      { hint: 'entries must be sorted so that every directory precedes its contents' },
    );
  }
  if (entry.type === 'symlink' && !entry.linkTarget) {
    throw new InputError(`symlink "${displayPath(entry.path)}" has no target`);
  }
  if (entry.type === 'symlink' && !BYTE_STRING.test(entry.linkTarget ?? '')) {
    throw new InputError(`target of symlink "${displayPath(entry.path)}" is not a latin1 byte string without NUL`);
  }
  if (entry.type === 'symlink' && entry.linkTarget!.length + 1 > MAX_NAME_SIZE) {
    throw new InputError(
      `symlink "${abbreviated(displayPath(entry.path))}" has a target of ${entry.linkTarget!.length} bytes: the kernel unpacks at most ${MAX_NAME_SIZE - 1} (PATH_MAX)`,
    );
  }
  if (dataSize(entry) > MAX_U32) {
    throw new InputError(`file "${displayPath(entry.path)}" is ${dataSize(entry)} bytes: newc cannot hold a file of 4 GiB or more`, {
      hint: 'remove or split the file in the image',
    });
  }
  checkU32(entry.uid, 'uid', entry);
  checkU32(entry.gid, 'gid', entry);
  checkU32(entry.devMajor ?? 0, 'device major', entry);
  checkU32(entry.devMinor ?? 0, 'device minor', entry);
}

function checkU32(value: number, field: string, entry: TreeEntry): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw new InputError(`${field} ${value} of "${displayPath(entry.path)}" does not fit in newc's 32-bit field`);
  }
}

/** A path shortened for an error line. */
function abbreviated(path: string): string {
  return path.length <= 120 ? path : `${path.slice(0, 60)}…${path.slice(-60)}`;
}

/**
 * Clamped (SOURCE_DATE_EPOCH), floored, and brought into newc's u32 field:
 * before 1970 becomes 0, after 2106-02-07 becomes 2^32-1 (docs/initramfs-layout.md).
 */
function archiveMtime(entry: TreeEntry, clampMtime: number | undefined): number {
  const mtime = clampMtime === undefined ? entry.mtime : Math.min(entry.mtime, clampMtime);
  return Math.min(MAX_U32, Math.max(0, Math.floor(mtime)));
}

/** The archive in order: bytes as they are, or a file range to read. */
type Piece = Buffer | { range: FileRange; name: string };

function* archivePieces(records: readonly PlannedRecord[]): Generator<Piece> {
  let bytes = 0;
  const piece = (buffer: Buffer) => {
    bytes += buffer.length;
    return buffer;
  };
  for (const record of records) {
    yield piece(encodeHeader(record.header, record.name));
    if (Buffer.isBuffer(record.data)) yield piece(record.data);
    else if (record.data !== undefined) {
      bytes += record.data.size;
      yield { range: record.data, name: record.name };
    }
    yield piece(ZEROS.subarray(0, paddingFor(record.header.filesize)));
  }
  yield piece(encodeHeader(TRAILER_HEADER, TRAILER_NAME));
  yield ZEROS.subarray(0, paddingFor(bytes, ARCHIVE_ALIGNMENT));
}

function* streamChunks(records: readonly PlannedRecord[], stats: ArchiveStats, partialFiles?: ReadonlyMap<string, string>): Generator<Buffer> {
  const ranges = new RangeReader(partialFiles);
  const batcher = new ChunkBatcher(BATCH_BYTES);
  const emit = (chunk: Buffer): Buffer[] => {
    stats.bytes += chunk.length;
    return batcher.add(chunk);
  };
  try {
    for (const piece of archivePieces(records)) {
      if (Buffer.isBuffer(piece)) yield* emit(piece);
      else for (const chunk of ranges.read(piece.range, piece.name)) yield* emit(chunk);
    }
    stats.entries = records.length;
    yield* batcher.flush();
  } finally {
    ranges.close();
  }
}

function* filledChunks(records: readonly PlannedRecord[], scratch: Buffer, partialFiles?: ReadonlyMap<string, string>): Generator<Buffer> {
  const ranges = new RangeReader(partialFiles);
  let at = 0;
  try {
    for (const piece of archivePieces(records)) {
      const size = Buffer.isBuffer(piece) ? piece.length : piece.range.size;
      for (let done = 0; done < size; ) {
        const room = scratch.subarray(at, at + Math.min(scratch.length - at, size - done));
        if (Buffer.isBuffer(piece)) piece.copy(room, 0, done);
        else ranges.readPart(piece.range, piece.name, done, room);
        done += room.length;
        at += room.length;
        if (at === scratch.length) {
          yield scratch;
          at = 0;
        }
      }
    }
    if (at > 0) yield scratch.subarray(0, at);
  } finally {
    ranges.close();
  }
}

const TRAILER_HEADER: Header = {
  ino: 0,
  mode: 0,
  uid: 0,
  gid: 0,
  nlink: 1,
  mtime: 0,
  filesize: 0,
  devMajor: 0,
  devMinor: 0,
  rdevMajor: 0,
  rdevMinor: 0,
};

/**
 * Reads file ranges with positional reads, keeping only the last file open.
 * The reads are synchronous on purpose: the image's archives are written on
 * worker threads, where blocking hurts no event loop, and the layer files sit
 * in the page cache, so an asynchronous round trip per file would cost more
 * than the read itself (tens of thousands of small files per image).
 */
class RangeReader {
  #file?: string;
  #descriptor?: number;
  readonly #partialFiles?: ReadonlyMap<string, string>;

  constructor(partialFiles?: ReadonlyMap<string, string>) {
    this.#partialFiles = partialFiles;
  }

  /** The range's contents in chunks; a sparse file's holes are one shared zero chunk, never allocated per hole. */
  *read(range: FileRange, entryPath: string): Generator<Buffer> {
    for (const piece of rangePieces(range, 0, range.size)) {
      if ('zeros' in piece) {
        for (let left = piece.zeros; left > 0; left -= READ_CHUNK) yield ZERO_CHUNK.subarray(0, Math.min(READ_CHUNK, left));
        continue;
      }
      const end = piece.position + piece.length;
      for (let position = piece.position; position < end; ) {
        const chunk = Buffer.allocUnsafe(Math.min(READ_CHUNK, end - position));
        const bytesRead = this.#readSome(range, entryPath, chunk, 0, chunk.length, position);
        position += bytesRead;
        yield chunk.subarray(0, bytesRead);
      }
    }
  }

  /** Fills `target` with the range's contents from `from` on. */
  readPart(range: FileRange, entryPath: string, from: number, target: Buffer): void {
    let at = 0;
    for (const piece of rangePieces(range, from, from + target.length)) {
      if ('zeros' in piece) {
        target.fill(0, at, at + piece.zeros);
        at += piece.zeros;
        continue;
      }
      for (let done = 0; done < piece.length; ) {
        done += this.#readSome(range, entryPath, target, at + done, at + piece.length, piece.position + done);
      }
      at += piece.length;
    }
  }

  #readSome(range: FileRange, entryPath: string, into: Buffer, offset: number, end: number, position: number): number {
    const bytesRead = readSync(this.#open(range.file), into, offset, end - offset, position);
    if (bytesRead === 0) {
      throw new InputError(
        `${range.file} ends at byte ${position}, before the end of "${displayPath(entryPath)}" (bytes ${range.offset}-${range.offset + storedSize(range)}); was it changed while rampack ran?`,
      );
    }
    return bytesRead;
  }

  close(): void {
    if (this.#descriptor !== undefined) closeSync(this.#descriptor);
    this.#descriptor = undefined;
    this.#file = undefined;
  }

  #open(file: string): number {
    if (this.#file !== file || this.#descriptor === undefined) {
      this.close();
      this.#descriptor = this.#openPartial(file) ?? openSync(file, 'r');
      this.#file = file;
    }
    return this.#descriptor;
  }

  /** The file's partial copy, unless there is none or it was renamed into place meanwhile. */
  #openPartial(file: string): number | undefined {
    const partial = this.#partialFiles?.get(file);
    if (partial === undefined) return undefined;
    try {
      return openSync(partial, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }
}

/** Gathers small buffers so the consumer (a compressor) sees few, large writes. */
class ChunkBatcher {
  readonly #limit: number;
  #pending: Buffer[] = [];
  #size = 0;

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** The buffers ready to go out (none while the batch is still small). */
  add(chunk: Buffer): Buffer[] {
    if (chunk.length >= this.#limit) return [...this.flush(), chunk];
    this.#pending.push(chunk);
    this.#size += chunk.length;
    return this.#size >= this.#limit ? this.flush() : [];
  }

  flush(): Buffer[] {
    if (this.#size === 0) return [];
    const batch = Buffer.concat(this.#pending, this.#size);
    this.#pending = [];
    this.#size = 0;
    return [batch];
  }
}
