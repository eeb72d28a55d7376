/**
 * The newc ("new ASCII", magic 070701) cpio format, the only one every Linux
 * kernel unpacks as an initramfs: a 110-byte header of 13 eight-digit hex
 * fields, the NUL-terminated name, the data, each padded to 4 bytes.
 */
import type { EntryType } from '../tree/entry.ts';

export const NEWC_MAGIC = '070701';
/** Same layout plus a byte-sum checksum; readers accept it (kernel >= 6.0 too). */
export const CRC_MAGIC = '070702';
export const HEADER_SIZE = 110;
export const TRAILER_NAME = 'TRAILER!!!';
/** PATH_MAX: the kernel silently skips entries whose namesize (with the NUL) is larger. */
export const MAX_NAME_SIZE = 4096;
export const MAX_U32 = 0xffffffff;

/** The 13 header fields, in on-disk order after the magic. */
export const HEADER_FIELDS = [
  'ino',
  'mode',
  'uid',
  'gid',
  'nlink',
  'mtime',
  'filesize',
  'devMajor',
  'devMinor',
  'rdevMajor',
  'rdevMinor',
  'namesize',
  'check',
] as const;
export type NewcHeader = Record<(typeof HEADER_FIELDS)[number], number>;

const FIELD_DIGITS = 8;

/** File type bits of st_mode (S_IFMT) per tree entry type. */
export const TYPE_BITS: Readonly<Record<EntryType, number>> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};
const TYPE_MASK = 0o170000;

/** The tree entry type of a cpio mode, or undefined (e.g. sockets). */
export function entryTypeOf(mode: number): EntryType | undefined {
  const bits = mode & TYPE_MASK;
  return (Object.keys(TYPE_BITS) as EntryType[]).find((type) => TYPE_BITS[type] === bits);
}

/** Bytes of zero padding that bring `length` up to a multiple of `unit`. */
export function paddingFor(length: number, unit = 4): number {
  return (unit - (length % unit)) % unit;
}

/** Bytes encodeHeader produces for a name: header, name, NUL, padding to 4. */
export function encodedHeaderSize(name: string): number {
  const size = HEADER_SIZE + name.length + 1;
  return size + paddingFor(size);
}

/** Header, NUL-terminated latin1 name and padding to 4, as one buffer. */
export function encodeHeader(header: Omit<NewcHeader, 'namesize' | 'check'>, name: string): Buffer {
  const buffer = Buffer.allocUnsafe(encodedHeaderSize(name));
  writeHeader(buffer, 0, header, name);
  return buffer;
}

/**
 * Writes encodeHeader's bytes into `target` at `offset` (which must have
 * room for encodedHeaderSize(name)) and returns the offset after them: how
 * the shard keys take every header without making a string or buffer each.
 */
export function writeHeader(target: Buffer, offset: number, header: Omit<NewcHeader, 'namesize' | 'check'>, name: string): number {
  // Byte by byte: these are a few bytes each, and a call into Buffer's native code costs more than the loop.
  let at = offset;
  for (let i = 0; i < NEWC_MAGIC.length; i++) target[at++] = NEWC_MAGIC.charCodeAt(i);
  // HEADER_FIELDS' order, spelled out: a loop over field names costs a keyed lookup per field.
  at = writeHex8(target, at, header.ino);
  at = writeHex8(target, at, header.mode);
  at = writeHex8(target, at, header.uid);
  at = writeHex8(target, at, header.gid);
  at = writeHex8(target, at, header.nlink);
  at = writeHex8(target, at, header.mtime);
  at = writeHex8(target, at, header.filesize);
  at = writeHex8(target, at, header.devMajor);
  at = writeHex8(target, at, header.devMinor);
  at = writeHex8(target, at, header.rdevMajor);
  at = writeHex8(target, at, header.rdevMinor);
  at = writeHex8(target, at, name.length + 1);
  at = writeHex8(target, at, 0);
  at += target.write(name, at, 'latin1');
  const end = offset + encodedHeaderSize(name);
  while (at < end) target[at++] = 0;
  return end;
}

/** "000102…FF" as ASCII: a header is written for every entry of every archive (and every shard key), so per byte, not per digit. */
const HEX_PAIRS = Buffer.from(Array.from({ length: 256 }, (_, byte) => byte.toString(16).toUpperCase().padStart(2, '0')).join(''), 'latin1');

function writeHex8(target: Buffer, at: number, value: number): number {
  // Callers check every field against newc's 32 bits first; a wider value here is a bug, not input.
  if (value >>> 0 !== value) throw new RangeError(`newc header field ${value} is not a 32-bit unsigned integer`);
  for (let shift = 24; shift >= 0; shift -= 8) {
    const pair = ((value >>> shift) & 0xff) * 2;
    target[at++] = HEX_PAIRS[pair]!;
    target[at++] = HEX_PAIRS[pair + 1]!;
  }
  return at;
}

/** Parses the 13 hex fields that follow the magic, or names the first field that is not 8 hex digits. */
export function decodeHeaderFields(header: Buffer): NewcHeader | { badField: string } {
  const fields = {} as NewcHeader;
  for (const [index, field] of HEADER_FIELDS.entries()) {
    const start = NEWC_MAGIC.length + index * FIELD_DIGITS;
    const text = header.toString('latin1', start, start + FIELD_DIGITS);
    if (!/^[0-9a-fA-F]{8}$/.test(text)) return { badField: `${field} "${text}"` };
    fields[field] = Number.parseInt(text, 16);
  }
  return fields;
}
