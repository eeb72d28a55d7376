/**
 * A streaming tar reader that does not extract anything: it indexes a layer's
 * entries (metadata plus the byte offset of each entry's data in the
 * uncompressed tar), so later stages can read file contents by offset.
 * tar-stream cannot report data offsets, hence this parser.
 *
 * Formats: v7, ustar (prefix + name), GNU (long names 'L'/'K', base-256
 * numbers, old sparse 'S' with extension blocks) and PAX ('x' per entry,
 * sparse files 0.0, 0.1 and 1.0). Where tar readers disagree, a layer is read
 * as Go's archive/tar reads it, since containerd, Docker and umoci unpack
 * images with it (docs/initramfs-layout.md, "Tar dialects"):
 * - of several PAX 'x' headers (or GNU 'L', or 'K') before one entry, the
 *   last counts: they are not merged;
 * - a GNU long name or link name wins over PAX path or linkpath;
 * - global 'g' headers are ignored (Go's unpackers and bsdtar ignore them;
 *   GNU tar applies them), with a warning when they would change entries;
 * - entries of types that carry no data (links, dirs, devices, fifos) are read
 *   without skipping data bytes.
 */
import { Transform } from 'node:stream';
import { InputError } from '../errors.ts';
import { displayPath, type SparseRun } from '../tree/entry.ts';

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
  /** Bytes of file contents (a sparse file's holes included); 0 for every type but 'file'. */
  size: number;
  /** Where the entry's data starts in the uncompressed tar. */
  dataOffset: number;
  /** A sparse file: its runs of data, stored back to back from dataOffset (see FileRange). */
  sparse?: SparseRun[];
  /** Symlink: the target as stored. Hard link: normalised path of the linked entry. */
  linkname?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes: name (decoded from UTF-8) -> raw value. */
  xattrs?: Record<string, Buffer>;
}

const BLOCK_SIZE = 512;
/** Bound on GNU long-name and PAX header bodies, which are held in memory. */
const MAX_METADATA_SIZE = 16 * 1024 * 1024;
/** Bound on the runs of one sparse file, which are held in memory (and in the layer index). */
export const MAX_SPARSE_RUNS = 1 << 20;
/** Linux limits on extended attributes (XATTR_NAME_MAX, XATTR_SIZE_MAX): lsetxattr refuses more. */
const MAX_XATTR_NAME = 255;
const MAX_XATTR_VALUE = 64 * 1024;
const CORRUPT_TAR_HINT = 'the layer is corrupt or not a tar archive; pull the image again or rebuild it';
const SPARSE_HINT = 'the sparse map is damaged; rebuild the image (or build the file without tar --sparse)';

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
  // Old GNU sparse header ('S'): four map entries, a continuation flag, the file's whole size.
  gnuSparse: [386, 96],
  gnuExtended: [482, 1],
  gnuRealSize: [483, 12],
} as const satisfies Record<string, readonly [number, number]>;
const TYPEFLAG_OFFSET = 156;
/** An old GNU sparse map entry: offset and length, 12 bytes each. */
const GNU_SPARSE_ENTRY = 24;
/** An old GNU sparse extension block: 21 map entries, then the continuation flag. */
const GNU_EXTENSION_ENTRIES = 21;
const GNU_EXTENSION_FLAG = 504;

const FILE_TYPES: Record<string, LayerEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file
  S: 'file', // old GNU sparse file
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

/** A PAX header's records; an empty value is no value. */
type PaxRecords = Map<string, Buffer>;

/** A PAX header: its records, and PAX sparse 0.0's repeated GNU.sparse.offset/numbytes records in order. */
interface PaxHeader {
  records: PaxRecords;
  sparseRecords: [key: string, value: string][];
}

/** Metadata entries ('L', 'K', 'x') whose bodies apply to the next entry. */
interface PendingMetadata {
  longName?: string;
  longLinkname?: string;
  pax?: PaxHeader;
}

interface MetadataBody {
  typeflag: string;
  body: Buffer;
  filled: number;
  padding: number;
}

/** The fields of an entry's header block, read before the block is reused. */
interface Header {
  offset: number;
  typeflag: string;
  name: string;
  linkname: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  devMajor?: number;
  devMinor?: number;
}

/** What a sparse entry's headers say: its map (unless it leads the data), size and name. */
interface SparseHeaders {
  runs?: SparseRunsBuilder;
  realSize: number;
  name?: string;
}

/** Repeated warnings of one kind in a layer: counted, the first one named. */
interface WarningTally {
  count: number;
  first: string;
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
  /** Set while the blocks that follow a header are not headers (old GNU sparse extensions, a 1.0 sparse map). */
  private blockReader?: (block: Buffer) => void;
  private pending: PendingMetadata = {};
  private readonly tallies = new Map<string, WarningTally>();
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
          if (this.blockReader !== undefined) this.blockReader(this.header);
          else this.readHeader(this.position - BLOCK_SIZE);
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
      this.headerFilled > 0 ||
      this.bytesToSkip > 0 ||
      this.metadataBody !== undefined ||
      this.blockReader !== undefined ||
      Object.keys(this.pending).length > 0;
    if (!this.finished && insideEntry) {
      throw new InputError(`${this.source} is truncated: the tar stream ends inside an entry at offset ${this.position}`, {
        hint: CORRUPT_TAR_HINT,
      });
    }
    return this.entries;
  }

  /** One line per kind of oddity met so far (records dropped, headers ignored), naming the first case. */
  warnings(): string[] {
    return [...this.tallies].map(([kind, { count, first }]) =>
      count === 1 ? `${this.source}: ${kind}: ${first}` : `${this.source}: ${kind} ${count} times (first: ${first})`,
    );
  }

  private warn(kind: string, detail: string): void {
    const tally = this.tallies.get(kind);
    if (tally === undefined) this.tallies.set(kind, { count: 1, first: detail });
    else tally.count++;
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
    if (this.header.every((byte) => byte === 0)) {
      // End-of-archive marker; anything after it (more zero blocks, record padding) is ignored.
      this.finished = true;
      return;
    }
    this.verifyChecksum(offset);
    const header = this.parseHeader(offset);
    if (header.typeflag === 'L' || header.typeflag === 'K' || header.typeflag === 'x' || header.typeflag === 'g') {
      this.startMetadataBody(header.typeflag, header.size, offset);
    } else if (header.typeflag === 'V') {
      this.bytesToSkip = paddedSize(header.size); // GNU volume label: not a file
    } else if (header.typeflag === 'S') {
      this.readOldSparseHeader(header);
    } else {
      this.readEntry(header);
    }
  }

  private parseHeader(offset: number): Header {
    const typeflag = String.fromCharCode(this.header[TYPEFLAG_OFFSET]!);
    const device = typeflag === '3' || typeflag === '4';
    return {
      offset,
      typeflag,
      name: this.headerName(),
      linkname: this.stringField('linkname'),
      mode: this.numericField('mode', offset) & 0o7777,
      uid: this.numericField('uid', offset),
      gid: this.numericField('gid', offset),
      mtime: this.numericField('mtime', offset),
      size: this.numericField('size', offset),
      ...(device && { devMajor: this.numericField('devMajor', offset), devMinor: this.numericField('devMinor', offset) }),
    };
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

  /** The last 'L', 'K' or 'x' before an entry replaces an earlier one of its kind, as in every tar reader. */
  private applyMetadata(typeflag: string, body: Buffer): void {
    if (typeflag === 'L') this.pending.longName = cString(body);
    else if (typeflag === 'K') this.pending.longLinkname = cString(body);
    else if (typeflag === 'x') this.pending.pax = this.parsePax(body);
    else this.ignoreGlobalPax(this.parsePax(body).records);
  }

  private ignoreGlobalPax(records: PaxRecords): void {
    const keys = [...records.keys()].filter((key) => key !== 'comment');
    if (keys.length > 0) {
      this.warn('ignored a global PAX header (as containerd, Docker and bsdtar do)', `records ${keys.map(displayKey).join(', ')}`);
    }
  }

  private parsePax(body: Buffer): PaxHeader {
    const records: PaxRecords = new Map();
    const sparseRecords: [string, string][] = [];
    let at = 0;
    while (at < body.length && body[at] !== 0) {
      const space = body.indexOf(0x20, at);
      const lengthText = space < 0 ? '' : body.toString('latin1', at, space);
      const length = /^\d{1,9}$/.test(lengthText) ? Number(lengthText) : NaN;
      const record = body.subarray(at, at + length);
      const equals = record.indexOf(0x3d, space - at);
      if (!(length > 0) || at + length > body.length || equals < 0 || record.at(-1) !== 0x0a) {
        throw new InputError(`${this.source}: malformed PAX extended header record at byte ${at} of its body`, {
          hint: CORRUPT_TAR_HINT,
        });
      }
      const key = record.toString('latin1', space - at + 1, equals);
      const value = record.subarray(equals + 1, record.length - 1);
      if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
        sparseRecords.push([key, value.toString('latin1')]); // PAX sparse 0.0 repeats them, once per run
      } else if (value.length === 0) {
        records.delete(key);
      } else {
        records.set(key, value);
      }
      at += length;
    }
    return { records, sparseRecords };
  }

  /** An old GNU sparse header: its map starts in the header and may go on in extension blocks. */
  private readOldSparseHeader(header: Header): void {
    const name = this.pending.longName ?? header.name;
    const runs = new SparseRunsBuilder((problem) => {
      throw this.sparseError(name, problem);
    });
    const realSize = this.numericField('gnuRealSize', header.offset);
    const readEntries = (block: Buffer, start: number, count: number): void => {
      for (let index = 0; index < count; index++) {
        const at = start + index * GNU_SPARSE_ENTRY;
        if (block[at] === 0) break; // an empty entry ends the list, as in GNU tar, bsdtar and Go
        runs.add(this.numberAt(block, at, header.offset), this.numberAt(block, at + 12, header.offset));
      }
    };
    readEntries(this.header, FIELD.gnuSparse[0], FIELD.gnuSparse[1] / GNU_SPARSE_ENTRY);
    const done = () => {
      this.blockReader = undefined;
      this.readEntry(header, { runs, realSize });
    };
    if (this.header[FIELD.gnuExtended[0]] === 0) return done();
    this.blockReader = (block) => {
      readEntries(block, 0, GNU_EXTENSION_ENTRIES);
      if (block[GNU_EXTENSION_FLAG] === 0) done();
    };
  }

  private readEntry(header: Header, oldSparse?: SparseHeaders): void {
    const { records: pax, sparseRecords } = this.pending.pax ?? { records: new Map<string, Buffer>(), sparseRecords: [] };
    const { longName, longLinkname } = this.pending;
    this.pending = {};
    const sparse = oldSparse ?? this.paxSparseHeaders(pax, sparseRecords, longName ?? header.name);
    const rawName = sparse?.name ?? this.longOverPax(longName, this.paxPath(pax, 'path', header)) ?? header.name;
    let type = FILE_TYPES[header.typeflag];
    if (type === undefined) {
      throw new InputError(
        `${this.source}: entry "${displayPath(rawName)}" at offset ${header.offset} has unsupported tar type '${header.typeflag}'`,
        { hint: 'rampack reads files, directories, links, devices and fifos only, as containerd and umoci do' },
      );
    }
    if (header.typeflag === '\0' && rawName.endsWith('/')) {
      type = 'dir'; // v7 archives mark directories by a trailing slash on a plain-file entry
    } else if (type !== 'dir' && rawName.endsWith('/')) {
      // GNU tar and bsdtar make it a directory (and then misread its data); Go makes it a file.
      throw this.entryError(rawName, header.offset, `is a ${type} whose name ends with "/", which only a directory's may`);
    }
    if (sparse !== undefined && type !== 'file') throw this.sparseError(rawName, `its headers are those of a sparse file, but it is a ${type}`);
    const storedBytes = paxNumber(pax, 'size', this.source) ?? header.size;
    const carriesData = type === 'file' || header.typeflag === 'D';
    this.bytesToSkip = carriesData ? paddedSize(storedBytes) : 0;
    const path = this.normalize(rawName, header.offset);
    if (path === '') {
      if (type !== 'dir') throw this.entryError(rawName, header.offset, 'replaces the root directory with a non-directory');
      return; // The root's own metadata is not part of the tree.
    }
    const entry: LayerEntry = {
      path,
      type,
      mode: header.mode,
      uid: paxNumber(pax, 'uid', this.source) ?? header.uid,
      gid: paxNumber(pax, 'gid', this.source) ?? header.gid,
      mtime: paxSeconds(pax, 'mtime', this.source) ?? header.mtime,
      size: type === 'file' ? storedBytes : 0,
      dataOffset: this.position,
      ...this.linkFields(type, this.longOverPax(longLinkname, this.paxPath(pax, 'linkpath', header)), header, rawName),
      ...(header.devMajor !== undefined && { devMajor: header.devMajor, devMinor: header.devMinor }),
      ...this.xattrFields(pax, rawName),
    };
    if (sparse === undefined) this.entries.push(entry);
    else if (sparse.runs !== undefined) this.addSparseEntry(entry, sparse.runs, sparse.realSize, storedBytes);
    else this.readSparseMapThenAdd(entry, sparse.realSize, storedBytes);
  }

  /** Go's archive/tar lets a GNU long name (or link name) win; GNU tar takes the PAX one, bsdtar the first of the two. */
  private longOverPax(long: string | undefined, pax: string | undefined): string | undefined {
    if (long !== undefined && pax !== undefined && long !== pax) {
      this.warn("took a GNU long name over a different PAX one, as Go's archive/tar does", `"${displayPath(long)}" over "${displayPath(pax)}"`);
    }
    return long ?? pax;
  }

  /** A PAX path or link path; a NUL in it is refused, as Go does (GNU tar would cut the name there). */
  private paxPath(pax: PaxRecords, key: 'path' | 'linkpath', header: Header): string | undefined {
    const value = pax.get(key);
    if (value?.includes(0)) {
      throw this.entryError(header.name, header.offset, `has a PAX ${key} with a NUL byte (${displayKey(value.toString('latin1'))})`);
    }
    return value?.toString('latin1');
  }

  /**
   * The sparse headers of a PAX entry, versions told apart as Go does: 0.0
   * (offset/numbytes records) and 0.1 (GNU.sparse.map) give the map here; 1.0
   * puts it at the start of the data.
   */
  private paxSparseHeaders(pax: PaxRecords, sparseRecords: [string, string][], headerName: string): SparseHeaders | undefined {
    if (sparseRecords.length === 0 && ![...pax.keys()].some((key) => key.startsWith('GNU.sparse.'))) return undefined;
    const name = paxString(pax, 'GNU.sparse.name');
    if (name?.includes('\0')) throw this.sparseError(headerName, `its GNU.sparse.name holds a NUL byte (${displayKey(name)})`);
    const fail = (problem: string): never => {
      throw this.sparseError(name ?? headerName, problem);
    };
    const version = `${paxString(pax, 'GNU.sparse.major') ?? ''}.${paxString(pax, 'GNU.sparse.minor') ?? ''}`;
    const map = sparseRecords.length > 0 ? this.mapOfRecords(sparseRecords, fail) : pax.get('GNU.sparse.map');
    const mapInHeader = version === '0.0' || version === '0.1' || (version === '.' && map !== undefined);
    if (!mapInHeader && version !== '1.0') {
      fail(version === '.' ? 'it has GNU.sparse records but no sparse map' : `its sparse format version ${version} is unknown`);
    }
    const sizeText = paxString(pax, 'GNU.sparse.size') ?? paxString(pax, 'GNU.sparse.realsize');
    const realSize = sizeText === undefined ? fail('it has no GNU.sparse.size or GNU.sparse.realsize') : decimal(sizeText);
    if (realSize === undefined) fail(`its size "${sizeText}" is not a decimal number`);
    if (!mapInHeader) return { realSize: realSize!, name };
    const runs = new SparseRunsBuilder(fail);
    if (map === undefined) fail('it has no GNU.sparse.map');
    const numbers = commaSeparatedNumbers(map!, fail);
    if (numbers.length % 2 !== 0) fail('its sparse map has an offset without a length');
    for (let index = 0; index < numbers.length; index += 2) runs.add(numbers[index]!, numbers[index + 1]!);
    const declared = paxString(pax, 'GNU.sparse.numblocks');
    if (declared !== undefined && decimal(declared) !== runs.count) fail(`GNU.sparse.numblocks says ${declared} but the map has ${runs.count} runs`);
    return { runs, realSize: realSize!, name };
  }

  /** PAX sparse 0.0's offset and numbytes records, alternating, as one 0.1 map ("offset,size,..."). */
  private mapOfRecords(sparseRecords: [string, string][], fail: (problem: string) => never): Buffer {
    sparseRecords.forEach(([key, value], index) => {
      const expected = index % 2 === 0 ? 'GNU.sparse.offset' : 'GNU.sparse.numbytes';
      if (key !== expected || value.includes(',')) fail(`it has ${key}=${value.slice(0, 40)} where ${expected} was expected`);
    });
    return Buffer.from(sparseRecords.map(([, value]) => value).join(','));
  }

  /** PAX sparse 1.0: the run count and the runs, one decimal number a line, fill the first blocks of the data. */
  private readSparseMapThenAdd(entry: LayerEntry, realSize: number, storedBytes: number): void {
    const fail = (problem: string): never => {
      throw this.sparseError(entry.path, problem);
    };
    const runs = new SparseRunsBuilder(fail);
    let runCount: number | undefined;
    let runOffset: number | undefined;
    const take = (number: number) => {
      if (runCount === undefined) {
        if (number > MAX_SPARSE_RUNS) fail(`its sparse map has ${number} runs, more than the ${MAX_SPARSE_RUNS} allowed`);
        runCount = number;
      } else if (runOffset === undefined) {
        runOffset = number;
      } else {
        runs.add(runOffset, number);
        runOffset = undefined;
      }
    };
    const complete = () => runCount !== undefined && runs.count === runCount;
    let digits = '';
    let mapBytes = 0;
    this.bytesToSkip = 0;
    this.blockReader = (block) => {
      mapBytes += BLOCK_SIZE;
      if (mapBytes > storedBytes) fail('its sparse map runs past the end of its data');
      // A number may go on in the next block; what follows the last one is padding.
      for (let at = 0; at < BLOCK_SIZE && !complete(); at++) {
        const byte = block[at]!;
        if (byte === 0x0a && digits !== '') {
          take(decimal(digits) ?? fail(`its sparse map number ${digits} is too large`));
          digits = '';
        } else if (byte >= 0x30 && byte <= 0x39 && digits.length <= 16) {
          digits += String.fromCharCode(byte);
        } else {
          fail(`its sparse map holds ${JSON.stringify(String.fromCharCode(byte))} where a decimal number was expected`);
        }
      }
      if (!complete()) return;
      this.blockReader = undefined;
      this.bytesToSkip = paddedSize(storedBytes) - mapBytes;
      this.addSparseEntry({ ...entry, dataOffset: this.position }, runs, realSize, storedBytes - mapBytes);
    };
  }

  private addSparseEntry(entry: LayerEntry, runs: SparseRunsBuilder, realSize: number, storedBytes: number): void {
    this.entries.push({ ...entry, size: realSize, sparse: runs.finish(realSize, storedBytes) });
  }

  private linkFields(type: LayerEntryType, longLinkname: string | undefined, header: Header, rawName: string) {
    if (type !== 'symlink' && type !== 'hardlink') return {};
    const linkname = longLinkname ?? header.linkname;
    if (type === 'symlink') return { linkname };
    // A hard link names another entry of the tree, so it obeys the same path rules.
    const target = this.normalize(linkname, header.offset);
    if (target === '') throw this.entryError(rawName, header.offset, 'is a hard link to the root directory');
    return { linkname: target };
  }

  /**
   * Extended attributes from SCHILY.xattr.NAME and LIBARCHIVE.xattr.NAME
   * records. A record Linux could not restore (empty name, a NUL in it, not
   * UTF-8, over 255 bytes, value over 64 KiB) is dropped with a warning; the
   * entry stays.
   */
  private xattrFields(records: PaxRecords, rawName: string): { xattrs?: Record<string, Buffer> } {
    const xattrs: Record<string, Buffer> = {};
    for (const [key, value] of records) {
      const xattr = decodeXattr(key, value);
      if (xattr === undefined) continue;
      const problem = xattrProblem(xattr.name, xattr.value);
      if (problem !== undefined || xattr.value === undefined) {
        this.warn('dropped extended attributes that Linux cannot hold', `"${displayPath(rawName)}" ${displayKey(key)} (${problem})`);
        continue;
      }
      const name = Buffer.from(xattr.name, 'latin1').toString('utf8');
      // When both spellings name one attribute, the SCHILY one wins, as in GNU tar.
      if (key.startsWith('SCHILY.') || !(name in xattrs)) xattrs[name] = xattr.value;
    }
    return Object.keys(xattrs).length === 0 ? {} : { xattrs };
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
    const value = parseNumeric(this.header.subarray(start, start + length));
    if (value === undefined || (field !== 'mtime' && value < 0)) {
      throw new InputError(`${this.source}: invalid ${field} field in the tar header at offset ${offset}`, {
        hint: CORRUPT_TAR_HINT,
      });
    }
    return value;
  }

  /** A 12-byte number of an old GNU sparse map. */
  private numberAt(block: Buffer, at: number, offset: number): number {
    const value = parseNumeric(block.subarray(at, at + 12));
    if (value === undefined || value < 0) {
      throw new InputError(`${this.source}: invalid sparse map number in the tar entry at offset ${offset}`, { hint: CORRUPT_TAR_HINT });
    }
    return value;
  }

  private entryError(rawName: string, offset: number, problem: string): InputError {
    return new InputError(`${this.source}: tar entry "${displayPath(rawName)}" at offset ${offset} ${problem}`, {
      hint: 'the image is malformed; rebuild it with a standard tool',
    });
  }

  private sparseError(rawName: string, problem: string): InputError {
    return new InputError(`${this.source}: sparse file "${displayPath(rawName)}" cannot be read: ${problem}`, { hint: SPARSE_HINT });
  }


}

/**
 * Collects a sparse map's runs and checks them as GNU tar, bsdtar and Go do:
 * in order, not overlapping, within the file, and covering exactly the data
 * stored in the tar.
 */
class SparseRunsBuilder {
  private readonly runs: SparseRun[] = [];
  private end = 0;
  private readonly fail: (problem: string) => never;

  constructor(fail: (problem: string) => never) {
    this.fail = fail;
  }

  get count(): number {
    return this.runs.length;
  }

  add(offset: number, size: number): void {
    if (this.runs.length >= MAX_SPARSE_RUNS) this.fail(`its sparse map has more than the ${MAX_SPARSE_RUNS} runs allowed`);
    if (offset < this.end) {
      this.fail(`its sparse map run at offset ${offset} starts before the previous run ends (${this.end}): runs must be in order and not overlap`);
    }
    this.end = offset + size;
    if (!Number.isSafeInteger(this.end)) this.fail(`its sparse map run at offset ${offset} of ${size} bytes is too large`);
    this.runs.push({ offset, size });
  }

  finish(realSize: number, storedBytes: number): SparseRun[] {
    if (this.end > realSize) this.fail(`its sparse map runs to byte ${this.end}, past the file's size of ${realSize} bytes`);
    const mapped = this.runs.reduce((sum, run) => sum + run.size, 0);
    if (mapped !== storedBytes) this.fail(`its sparse map covers ${mapped} bytes, but the tar stores ${storedBytes} bytes of data for it`);
    // Zero-length runs only mark where a file ending in a hole ends: nothing to keep.
    return this.runs.filter((run) => run.size > 0);
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

/** A numeric header field: octal text, or GNU base-256 when the high bit is set. */
function parseNumeric(bytes: Buffer): number | undefined {
  return bytes[0]! & 0x80 ? parseBase256(bytes) : parseOctal(bytes);
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

/** A non-negative decimal integer that a double holds exactly, or undefined. */
function decimal(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** The numbers of a PAX 0.x sparse map ("offset,size,offset,size,..."), at most two per allowed run. */
function commaSeparatedNumbers(text: Buffer, fail: (problem: string) => never): number[] {
  const numbers: number[] = [];
  for (let start = 0, at = 0; at <= text.length; at++) {
    if (at < text.length && text[at] !== 0x2c) continue;
    if (numbers.length >= 2 * MAX_SPARSE_RUNS) fail(`its sparse map has more than the ${MAX_SPARSE_RUNS} runs allowed`);
    const field = text.toString('latin1', start, at);
    numbers.push(decimal(field) ?? fail(`its sparse map holds "${field.slice(0, 40)}" where a decimal number was expected`));
    start = at + 1;
  }
  return numbers;
}

function paxString(records: PaxRecords, key: string): string | undefined {
  return records.get(key)?.toString('latin1');
}

function paxNumber(records: PaxRecords, key: string, source: string): number | undefined {
  const text = paxString(records, key);
  if (text === undefined) return undefined;
  return decimal(text) ?? invalidPaxValue(source, key, text);
}

/** PAX times are decimal seconds with an optional fraction; floor them. */
function paxSeconds(records: PaxRecords, key: string, source: string): number | undefined {
  const text = paxString(records, key);
  if (text === undefined) return undefined;
  const match = /^(-?)(\d{1,15})(?:\.(\d*))?$/.exec(text);
  if (match === null) return invalidPaxValue(source, key, text);
  const whole = Number(match[2]);
  const hasFraction = /[1-9]/.test(match[3] ?? '');
  return match[1] === '-' ? -whole - (hasFraction ? 1 : 0) : whole;
}

function invalidPaxValue(source: string, key: string, text: string): never {
  throw new InputError(`${source}: invalid PAX ${key} value "${displayPath(text.slice(0, 40))}" in a tar header`, { hint: CORRUPT_TAR_HINT });
}

/** A PAX key as a warning shows it: quoted, control bytes escaped. */
function displayKey(key: string): string {
  return JSON.stringify(displayPath(key.slice(0, 300)));
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$/;

/**
 * The attribute a SCHILY.xattr or LIBARCHIVE.xattr record carries (name as a
 * byte string; no value when it cannot be decoded), or undefined for other keys.
 */
function decodeXattr(key: string, value: Buffer): { name: string; value?: Buffer } | undefined {
  if (key.startsWith('SCHILY.xattr.')) return { name: key.slice('SCHILY.xattr.'.length), value };
  if (!key.startsWith('LIBARCHIVE.xattr.')) return undefined;
  // libarchive percent-encodes the name and base64-encodes the value.
  const name = key.slice('LIBARCHIVE.xattr.'.length).replace(/%([0-9a-fA-F]{2})/g, (_match, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  const text = value.toString('latin1');
  return { name, ...(BASE64.test(text) && { value: Buffer.from(text, 'base64') }) };
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Why Linux could not set this attribute (lsetxattr), or undefined when it could. */
function xattrProblem(name: string, value: Buffer | undefined): string | undefined {
  if (value === undefined) return 'value is not base64';
  if (name === '') return 'empty name';
  if (name.includes('\0')) return 'NUL byte in the name';
  if (name.length > MAX_XATTR_NAME) return `name longer than ${MAX_XATTR_NAME} bytes`;
  if (value.length > MAX_XATTR_VALUE) return `value larger than ${MAX_XATTR_VALUE} bytes`;
  try {
    STRICT_UTF8.decode(Buffer.from(name, 'latin1'));
  } catch {
    return 'name is not UTF-8';
  }
  return undefined;
}
