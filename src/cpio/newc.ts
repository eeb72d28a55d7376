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

/** Header, NUL-terminated latin1 name and padding to 4, as one buffer. */
export function encodeHeader(header: Omit<NewcHeader, 'namesize' | 'check'>, name: string): Buffer {
  const text = headerText(header, name);
  const buffer = Buffer.alloc(text.length + paddingFor(text.length));
  buffer.write(text, 0, 'latin1');
  return buffer;
}

/** encodeHeader's bytes as a byte string (one char per byte), the zero padding left out. */
export function headerText(header: Omit<NewcHeader, 'namesize' | 'check'>, name: string): string {
  let text = NEWC_MAGIC;
  for (const field of HEADER_FIELDS) text += hex8(field === 'namesize' ? name.length + 1 : field === 'check' ? 0 : header[field]);
  return `${text}${name}\0`;
}

/** "00".."FF": a header is formatted for every entry of every archive (and every shard key), so per byte, not per digit. */
const HEX_BYTES = Array.from({ length: 256 }, (_, byte) => byte.toString(16).toUpperCase().padStart(2, '0'));

function hex8(value: number): string {
  if (value >>> 0 !== value) return value.toString(16).toUpperCase().padStart(FIELD_DIGITS, '0');
  return HEX_BYTES[value >>> 24]! + HEX_BYTES[(value >>> 16) & 0xff]! + HEX_BYTES[(value >>> 8) & 0xff]! + HEX_BYTES[value & 0xff]!;
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
