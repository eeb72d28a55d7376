/**
 * A streaming tar reader that does not extract anything: it indexes a layer's
 * entries (metadata plus the byte offset of each entry's data in the
 * uncompressed tar), so later stages can read file contents by offset.
 * tar-stream cannot report data offsets, hence this parser.
 *
 * Formats: v7, ustar (prefix + name), GNU (long names 'L'/'K', base-256
 * numbers) and PAX ('x' per entry, 'g' global). Like Go's archive/tar (which
 * containerd, umoci and go-containerregistry use), entries of types that carry
 * no data (links, dirs, devices, fifos) are read without skipping data bytes.
 */
import { Transform } from 'node:stream';
import { InputError } from '../errors.ts';
import { displayPath } from '../tree/entry.ts';

export type LayerEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface LayerEntry {
  /** Normalised byte-string path (see normalizeLayerPath); never the root itself. */
  path: string;
  type: LayerEntryType;
  /** Permission bits including setuid, setgid and sticky (mask 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Whole seconds since the epoch (fractions floored). */
  mtime: number;
  /** Bytes of file data; 0 for every type but 'file'. */
  size: number;
  /** Where the entry's data starts in the uncompressed tar. */
  dataOffset: number;
  /** Symlink: the target as stored. Hard link: normalised path of the linked entry. */
  linkname?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes: name (byte string) -> raw value. */
  xattrs?: Record<string, Buffer>;
}

const BLOCK_SIZE = 512;
/** Bound on GNU long-name and PAX header bodies, which are held in memory. */
const MAX_METADATA_SIZE = 16 * 1024 * 1024;
const CORRUPT_TAR_HINT = 'the layer is corrupt or not a tar archive; pull the image again or rebuild it';

/** Tar header fields: [offset, length]. */
const FIELD = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  checksum: [148, 8],
  linkname: [157, 100],
  magic: [257, 8],
  devMajor: [329, 8],
  devMinor: [337, 8],
  prefix: [345, 155],
} as const satisfies Record<string, readonly [number, number]>;
const TYPEFLAG_OFFSET = 156;

const FILE_TYPES: Record<string, LayerEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
  D: 'dir', // GNU dump directory: a directory followed by a listing we skip
};

/**
 * Normalises a tar path: no leading "/" or "./", no "." or empty components,
 * ".." resolved lexically. Returns undefined when ".." climbs above the root.
 */
export function normalizeLayerPath(raw: string): string | undefined {
  const parts: string[] = [];
  for (const component of raw.split('/')) {
    if (component === '' || component === '.') continue;
    if (component === '..') {
      if (parts.length === 0) return undefined;
      parts.pop();
    } else {
      parts.push(component);
    }
  }
  return parts.join('/');
}

type PaxRecords = Map<string, Buffer>;

/** Metadata entries ('L', 'K', 'x', 'g') whose bodies apply to the next entry. */
interface PendingMetadata {
  longName?: string;
  longLinkname?: string;
  pax?: PaxRecords;
}

interface MetadataBody {
  typeflag: string;
  body: Buffer;
  filled: number;
  padding: number;
}

/**
 * Consumes an uncompressed tar stream chunk by chunk and collects its entries.
 * `source` names the layer in error messages.
 */
export class TarIndexer {
  readonly entries: LayerEntry[] = [];
  private readonly source: string;
  /** Bytes consumed so far: the absolute offset of the next byte. */
  private position = 0;
  private readonly header = Buffer.alloc(BLOCK_SIZE);
  private headerFilled = 0;
  private bytesToSkip = 0;
  private metadataBody?: MetadataBody;
  private pending: PendingMetadata = {};
  private globalPax: PaxRecords = new Map();
  private finished = false;

  constructor(source: string) {
    this.source = source;
  }

  write(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.finished) {
      const available = chunk.length - at;
      let consumed: number;
      if (this.bytesToSkip > 0) {
        consumed = Math.min(this.bytesToSkip, available);
        this.bytesToSkip -= consumed;
        this.position += consumed;
      } else if (this.metadataBody !== undefined) {
        consumed = this.fillMetadataBody(this.metadataBody, chunk, at);
      } else {
        consumed = Math.min(BLOCK_SIZE - this.headerFilled, available);
        chunk.copy(this.header, this.headerFilled, at, at + consumed);
        this.headerFilled += consumed;
        this.position += consumed;
        if (this.headerFilled === BLOCK_SIZE) {
          this.headerFilled = 0;
          this.readHeader(this.position - BLOCK_SIZE);
        }
      }
      at += consumed;
    }
  }

  /** Whether the end-of-archive marker has been read: what follows it is not the archive's. */
  get done(): boolean {
    return this.finished;
  }

  /** Signals the end of the stream; throws if it ended inside an entry. */
  end(): LayerEntry[] {
    const insideEntry =
      this.headerFilled > 0 || this.bytesToSkip > 0 || this.metadataBody !== undefined || Object.keys(this.pending).length > 0;
    if (!this.finished && insideEntry) {
      throw new InputError(`${this.source} is truncated: the tar stream ends inside an entry at offset ${this.position}`, {
        hint: CORRUPT_TAR_HINT,
      });
    }
    return this.entries;
  }

  private fillMetadataBody(metadata: MetadataBody, chunk: Buffer, at: number): number {
    const consumed = Math.min(metadata.body.length - metadata.filled, chunk.length - at);
    chunk.copy(metadata.body, metadata.filled, at, at + consumed);
    metadata.filled += consumed;
    this.position += consumed;
    if (metadata.filled === metadata.body.length) {
      this.metadataBody = undefined;
      this.bytesToSkip = metadata.padding;
      this.applyMetadata(metadata.typeflag, metadata.body);
    }
    return consumed;
  }

  private readHeader(offset: number): void {
    const header = this.header;
    if (header.every((byte) => byte === 0)) {
      // End-of-archive marker; anything after it (more zero blocks, record padding) is ignored.
      this.finished = true;
      return;
    }
    this.verifyChecksum(offset);
    const typeflag = String.fromCharCode(header[TYPEFLAG_OFFSET]!);
    const size = this.numericField('size', offset);
    if (typeflag === 'L' || typeflag === 'K' || typeflag === 'x' || typeflag === 'g') {
      this.startMetadataBody(typeflag, size, offset);
    } else if (typeflag === 'V') {
      this.bytesToSkip = paddedSize(size); // GNU volume label: not a file
    } else if (typeflag === 'S') {
      throw this.sparseError(this.headerName());
    } else {
      this.readEntry(typeflag, size, offset);
    }
  }

  private verifyChecksum(offset: number): void {
    const [start, length] = FIELD.checksum;
    let unsigned = 0;
    let signed = 0;
    for (let index = 0; index < BLOCK_SIZE; index++) {
      const byte = index >= start && index < start + length ? 0x20 : this.header[index]!;
      unsigned += byte;
      signed += byte > 127 ? byte - 256 : byte;
    }
    const stored = parseOctal(this.header.subarray(start, start + length));
    // Some historic tars summed signed bytes; Go and GNU tar accept both.
    if (stored !== unsigned && stored !== signed) {
      throw new InputError(`${this.source} is not a valid tar: header checksum mismatch at offset ${offset}`, {
        hint: CORRUPT_TAR_HINT,
      });
    }
  }

  private startMetadataBody(typeflag: string, size: number, offset: number): void {
    if (size > MAX_METADATA_SIZE) {
      throw new InputError(
        `${this.source}: tar metadata entry at offset ${offset} is ${size} bytes, more than the ${MAX_METADATA_SIZE} allowed`,
        { hint: CORRUPT_TAR_HINT },
      );
    }
    const metadata = { typeflag, body: Buffer.alloc(size), filled: 0, padding: paddedSize(size) - size };
    if (size === 0) {
      this.bytesToSkip = metadata.padding;
      this.applyMetadata(typeflag, metadata.body);
    } else {
      this.metadataBody = metadata;
    }
  }

  private applyMetadata(typeflag: string, body: Buffer): void {
    if (typeflag === 'L') this.pending.longName = cString(body);
    else if (typeflag === 'K') this.pending.longLinkname = cString(body);
    else if (typeflag === 'x') this.pending.pax = mergePax(this.pending.pax ?? new Map(), this.parsePax(body));
    else this.globalPax = mergePax(this.globalPax, this.parsePax(body));
  }

  private parsePax(body: Buffer): PaxRecords {
    const records: PaxRecords = new Map();
    let at = 0;
    while (at < body.length && body[at] !== 0) {
      const space = body.indexOf(0x20, at);
      const length = space < 0 ? NaN : Number(body.toString('latin1', at, space));
      const record = body.subarray(at, at + length);
      const equals = record.indexOf(0x3d, space - at);
      if (!Number.isSafeInteger(length) || length <= 0 || at + length > body.length || equals < 0 || record.at(-1) !== 0x0a) {
        throw new InputError(`${this.source}: malformed PAX extended header record at byte ${at} of its body`, {
          hint: CORRUPT_TAR_HINT,
        });
      }
      records.set(record.toString('latin1', space - at + 1, equals), record.subarray(equals + 1, record.length - 1));
      at += length;
    }
    return records;
  }

  private readEntry(typeflag: string, headerSize: number, offset: number): void {
    const pax = mergePax(withoutPerFileKeys(this.globalPax), this.pending.pax ?? new Map());
    const { longName, longLinkname } = this.pending;
    this.pending = {};
    const rawName = paxString(pax, 'path') ?? longName ?? this.headerName();
    if ([...pax.keys()].some((key) => key.startsWith('GNU.sparse.'))) {
      throw this.sparseError(paxString(pax, 'GNU.sparse.name') ?? rawName);
    }
    let type = FILE_TYPES[typeflag];
    if (type === undefined) {
      throw new InputError(
        `${this.source}: entry "${displayPath(rawName)}" at offset ${offset} has unsupported tar type '${typeflag}'`,
        { hint: 'rampack reads files, directories, links, devices and fifos only' },
      );
    }
    // v7 archives mark directories by a trailing slash on a plain-file entry.
    if (typeflag === '\0' && rawName.endsWith('/')) type = 'dir';
    const size = paxNumber(pax, 'size', this.source) ?? headerSize;
    const carriesData = type === 'file' || typeflag === 'D';
    this.bytesToSkip = carriesData ? paddedSize(size) : 0;
    const path = this.normalize(rawName, offset);
    if (path === '') {
      if (type !== 'dir') throw this.entryError(rawName, offset, 'replaces the root directory with a non-directory');
      return; // The root's own metadata is not part of the tree.
    }
    this.entries.push({
      path,
      type,
      mode: this.numericField('mode', offset) & 0o7777,
      uid: paxNumber(pax, 'uid', this.source) ?? this.numericField('uid', offset),
      gid: paxNumber(pax, 'gid', this.source) ?? this.numericField('gid', offset),
      mtime: paxSeconds(pax, 'mtime', this.source) ?? this.numericField('mtime', offset),
      size: type === 'file' ? size : 0,
      dataOffset: this.position,
      ...this.linkFields(type, paxString(pax, 'linkpath') ?? longLinkname, rawName, offset),
      ...this.deviceFields(type, offset),
      ...xattrFields(pax),
    });
  }

  private linkFields(type: LayerEntryType, longLinkname: string | undefined, rawName: string, offset: number) {
    if (type !== 'symlink' && type !== 'hardlink') return {};
    const linkname = longLinkname ?? this.stringField('linkname');
    if (type === 'symlink') return { linkname };
    // A hard link names another entry of the tree, so it obeys the same path rules.
    const target = this.normalize(linkname, offset);
    if (target === '') throw this.entryError(rawName, offset, 'is a hard link to the root directory');
    return { linkname: target };
  }

  private deviceFields(type: LayerEntryType, offset: number) {
    if (type !== 'char' && type !== 'block') return {};
    return { devMajor: this.numericField('devMajor', offset), devMinor: this.numericField('devMinor', offset) };
  }

  private normalize(rawPath: string, offset: number): string {
    const path = normalizeLayerPath(rawPath);
    if (path === undefined) {
      throw new InputError(
        `${this.source}: tar entry "${displayPath(rawPath)}" at offset ${offset} points outside the root filesystem (".." above "/")`,
        { hint: 'the image is malformed or malicious; rampack will not unpack it' },
      );
    }
    return path;
  }

  /** The ustar name, joined with the ustar prefix when the header has one. */
  private headerName(): string {
    const name = this.stringField('name');
    const magic = this.header.toString('latin1', FIELD.magic[0], FIELD.magic[0] + 6);
    if (magic !== 'ustar\0') return name; // v7 or GNU: the prefix area holds other data
    // star archives end the prefix early and keep access/change times after it.
    const isStar = this.header.toString('latin1', 508, 512) === 'tar\0';
    const prefix = cString(this.header.subarray(FIELD.prefix[0], FIELD.prefix[0] + (isStar ? 131 : FIELD.prefix[1])));
    return prefix === '' ? name : `${prefix}/${name}`;
  }

  private stringField(field: keyof typeof FIELD): string {
    const [start, length] = FIELD[field];
    return cString(this.header.subarray(start, start + length));
  }

  private numericField(field: keyof typeof FIELD, offset: number): number {
    const [start, length] = FIELD[field];
    const bytes = this.header.subarray(start, start + length);
    const value = bytes[0]! & 0x80 ? parseBase256(bytes) : parseOctal(bytes);
    if (value === undefined || (field === 'size' && value < 0)) {
      throw new InputError(`${this.source}: invalid ${field} field in the tar header at offset ${offset}`, {
        hint: CORRUPT_TAR_HINT,
      });
    }
    return value;
  }

  private entryError(rawName: string, offset: number, problem: string): InputError {
    return new InputError(`${this.source}: tar entry "${displayPath(rawName)}" at offset ${offset} ${problem}`, {
      hint: 'the image is malformed; rebuild it with a standard tool',
    });
  }

  private sparseError(rawName: string): InputError {
    return new InputError(`${this.source}: "${displayPath(rawName)}" is a GNU sparse file, which rampack does not support`, {
      hint: 'rebuild the image without sparse files (e.g. without tar --sparse)',
    });
  }
}

/** A pass-through stream that feeds every chunk to `indexer` on its way. */
export function tarIndexStream(indexer: TarIndexer): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      try {
        indexer.write(chunk);
        callback(null, chunk);
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback) {
      try {
        indexer.end();
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

function paddedSize(size: number): number {
  return Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
}

/** A NUL-terminated byte string. */
function cString(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  return bytes.toString('latin1', 0, end < 0 ? bytes.length : end);
}

function parseOctal(bytes: Buffer): number | undefined {
  const text = cString(bytes).trim();
  if (text === '') return 0;
  return /^[0-7]+$/.test(text) ? parseInt(text, 8) : undefined;
}

/** GNU base-256: high bit set, then a big-endian two's-complement number. */
function parseBase256(bytes: Buffer): number | undefined {
  const negative = (bytes[0]! & 0x40) !== 0;
  let value = 0n;
  for (const [index, byte] of bytes.entries()) {
    const digit = (negative ? ~byte & 0xff : byte) & (index === 0 ? 0x7f : 0xff);
    value = (value << 8n) | BigInt(digit);
  }
  const result = negative ? -value - 1n : value;
  return result >= BigInt(Number.MIN_SAFE_INTEGER) && result <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(result) : undefined;
}

/** Later records win; an empty value deletes the key (PAX semantics). */
function mergePax(base: PaxRecords, overrides: PaxRecords): PaxRecords {
  const merged = new Map(base);
  for (const [key, value] of overrides) {
    if (value.length === 0) merged.delete(key);
    else merged.set(key, value);
  }
  return merged;
}

/** Global PAX headers apply to later entries, but naming or sizing them all alike makes no sense. */
function withoutPerFileKeys(records: PaxRecords): PaxRecords {
  const kept = new Map(records);
  for (const key of ['path', 'linkpath', 'size']) kept.delete(key);
  return kept;
}

function paxString(records: PaxRecords, key: string): string | undefined {
  return records.get(key)?.toString('latin1');
}

function paxNumber(records: PaxRecords, key: string, source: string): number | undefined {
  const text = paxString(records, key);
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw invalidPaxValue(source, key, text);
  return Number(text);
}

/** PAX times are decimal seconds with an optional fraction; floor them. */
function paxSeconds(records: PaxRecords, key: string, source: string): number | undefined {
  const text = paxString(records, key);
  if (text === undefined) return undefined;
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (match === null) throw invalidPaxValue(source, key, text);
  const whole = Number(match[2]);
  const hasFraction = /[1-9]/.test(match[3] ?? '');
  return match[1] === '-' ? -whole - (hasFraction ? 1 : 0) : whole;
}

function invalidPaxValue(source: string, key: string, text: string): InputError {
  return new InputError(`${source}: invalid PAX ${key} value "${text}" in a tar header`, { hint: CORRUPT_TAR_HINT });
}

function xattrFields(records: PaxRecords): { xattrs?: Record<string, Buffer> } {
  const xattrs: Record<string, Buffer> = {};
  for (const [key, value] of records) {
    if (key.startsWith('LIBARCHIVE.xattr.')) {
      // libarchive percent-encodes the name and base64-encodes the value.
      const name = key.slice('LIBARCHIVE.xattr.'.length).replace(/%([0-9a-fA-F]{2})/g, (_match, hex: string) =>
        String.fromCharCode(parseInt(hex, 16)),
      );
      xattrs[name] ??= Buffer.from(value.toString('latin1'), 'base64');
    } else if (key.startsWith('SCHILY.xattr.')) {
      xattrs[key.slice('SCHILY.xattr.'.length)] = Buffer.from(value);
    }
  }
  return Object.keys(xattrs).length === 0 ? {} : { xattrs };
}
