/**
 * Reads an initramfs file as the kernel does: uncompressed newc archives at
 * the start (e.g. early microcode), then one compressed stream (gzip or zstd,
 * members or frames back to back) holding one or more archives. A later entry
 * of the same path replaces an earlier one. Used by `inspect`, `diff` and
 * `verify --boot`.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { createDecompressor, detectCompression, isCorruptStreamError, type Compression } from '../compress/index.ts';
import { CRC_MAGIC, decodeHeaderFields, entryTypeOf, HEADER_SIZE, NEWC_MAGIC, paddingFor, TRAILER_NAME } from '../cpio/newc.ts';
import { readNewcArchive, type CpioRecord } from '../cpio/reader.ts';
import { InputError, RampackError } from '../errors.ts';
import type { EntryType } from '../tree/entry.ts';
import { openInputFile } from '../util/input-file.ts';
import { largestFiles, sizeByDirectory, type DirectorySize, type SizedFile } from './size.ts';

export const AGENT_PATH = '/init';
export const IMAGE_JSON_PATH = '/etc/rampack/image.json';

export interface InitramfsEntry {
  /** Absolute, e.g. "/usr/bin/env" ("/" for the root itself); UTF-8 where the name decodes. */
  path: string;
  type: EntryType | 'socket';
  /** Permission bits (mask 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** File size; hard links all show the size of the data they share. */
  size: number;
  /** Hex SHA-256 of a file's contents. */
  sha256?: string;
  linkTarget?: string;
  /** "major:minor" of a device. */
  device?: string;
  /** Set on hard-link members after the first: their data is stored once and counted once. */
  hardLinkOf?: string;
}

export interface InitramfsContents {
  file: string;
  /** Size of the file. */
  size: number;
  /** Codec of each part, in order: "none" for uncompressed archives at the start. */
  compression: Compression[];
  /** Bytes of newc the parts decompress to. */
  uncompressedSize: number;
  /** Sorted by path. */
  entries: InitramfsEntry[];
  /** /etc/rampack/image.json, parsed; undefined when absent. */
  imageJson?: unknown;
}

/** An initramfs file read by position: only the headers of its uncompressed start are looked at. */
class PositionalFile {
  readonly handle: FileHandle;
  readonly size: number;

  constructor(handle: FileHandle, size: number) {
    this.handle = handle;
    this.size = size;
  }

  /** Up to `length` bytes at `position` (fewer at the end of the file). */
  async read(position: number, length: number): Promise<Buffer> {
    const { buffer, bytesRead } = await this.handle.read(Buffer.alloc(length), 0, length, position);
    return buffer.subarray(0, bytesRead);
  }
}

/** Bytes looked at per read while skipping the NUL padding between archives: a file of gigabytes of NULs is skipped at memcmp speed. */
const NUL_SCAN_BYTES = 1024 * 1024;
const NULS = Buffer.alloc(NUL_SCAN_BYTES);

/** Where the uncompressed archives at the start of the file end (0 when it starts compressed). */
async function plainArchivesEnd(file: PositionalFile): Promise<number> {
  let offset = 0;
  for (;;) {
    offset = await skipNulBytes(file, offset);
    const magic = (await file.read(offset, NEWC_MAGIC.length)).toString('latin1');
    if (magic !== NEWC_MAGIC && magic !== CRC_MAGIC) return offset;
    offset = await archiveEnd(file, offset);
  }
}

async function skipNulBytes(file: PositionalFile, start: number): Promise<number> {
  for (let offset = start; offset < file.size; offset += NUL_SCAN_BYTES) {
    const bytes = await file.read(offset, NUL_SCAN_BYTES);
    if (bytes.equals(NULS.subarray(0, bytes.length))) continue;
    return offset + bytes.findIndex((byte) => byte !== 0);
  }
  return file.size;
}

/** The offset after the trailer of the archive at `start`; the file's end when it is cut short (the reader then says where). */
async function archiveEnd(file: PositionalFile, start: number): Promise<number> {
  let offset = start;
  while (offset + HEADER_SIZE <= file.size) {
    const fields = decodeHeaderFields(await file.read(offset, HEADER_SIZE));
    if ('badField' in fields) break;
    const nameStart = offset + HEADER_SIZE;
    const name = (await file.read(nameStart, Math.max(0, fields.namesize - 1))).toString('latin1');
    const dataStart = nameStart + fields.namesize + paddingFor(HEADER_SIZE + fields.namesize);
    offset = dataStart + fields.filesize + paddingFor(fields.filesize);
    if (name === TRAILER_NAME) return offset;
  }
  return file.size;
}

/** The newc bytes of the whole file, streamed: plain part, then the compressed part decompressed. */
async function* newcBytes(path: string, plainEnd: number, codec: Compression | undefined, counter: { bytes: number }): AsyncGenerator<Buffer> {
  if (plainEnd > 0) {
    for await (const chunk of createReadStream(path, { end: plainEnd - 1 }) as AsyncIterable<Buffer>) {
      counter.bytes += chunk.length;
      yield chunk;
    }
  }
  if (codec === undefined) return;
  const decompressed = createReadStream(path, { start: plainEnd }).pipe(createDecompressor(codec));
  for await (const chunk of decompressed as AsyncIterable<Buffer>) {
    counter.bytes += chunk.length;
    yield chunk;
  }
}

function entryPath(name: string): string {
  const relative = name.replace(/^(\.?\/)+/, '');
  return relative === '.' || relative === '' ? '/' : `/${Buffer.from(relative, 'latin1').toString('utf8')}`;
}

function toEntry(record: CpioRecord): InitramfsEntry {
  const type = entryTypeOf(record.mode) ?? 'socket';
  const entry: InitramfsEntry = { path: entryPath(record.name), type, mode: record.mode & 0o7777, uid: record.uid, gid: record.gid, size: record.size };
  if (type === 'file') entry.sha256 = createHash('sha256').update(record.data!).digest('hex');
  if (type === 'symlink') entry.linkTarget = Buffer.from(record.data!.toString('latin1'), 'latin1').toString('utf8');
  if (type === 'char' || type === 'block') entry.device = `${record.rdevMajor}:${record.rdevMinor}`;
  return entry;
}

/** Hard links: newc stores the data once (on the last member); every member gets its size and digest. */
function shareHardLinkData(members: Map<string, InitramfsEntry[]>): void {
  for (const group of members.values()) {
    if (group.length < 2) continue;
    const carrier = group.find((entry) => entry.size > 0) ?? group[group.length - 1]!;
    for (const entry of group) {
      entry.size = carrier.size;
      entry.sha256 = carrier.sha256;
      if (entry !== group[0]) entry.hardLinkOf = group[0]!.path;
    }
  }
}

function fileError(file: string, error: unknown): never {
  if (error instanceof RampackError) throw new InputError(`${file}: ${error.message}`, { hint: 'is it an initramfs (newc cpio, plain, gzip or zstd)?', cause: error });
  if (isCorruptStreamError(error)) throw new InputError(`${file}: corrupt compressed data: ${(error as Error).message}`, { cause: error });
  throw error;
}

/** Reads every entry of an initramfs file, streamed (contents hashed, not kept, but for image.json). */
export async function readInitramfs(file: string): Promise<InitramfsContents> {
  const { handle, size } = await openInputFile(file, 'initramfs', undefined, 'pass an initramfs file, or an image reference');
  try {
    const positional = new PositionalFile(handle, size);
    const plainEnd = await plainArchivesEnd(positional);
    const codec = plainEnd < positional.size ? detectCompression(await positional.read(plainEnd, 4)) : undefined;
    const compression: Compression[] = [...(plainEnd > 0 ? ['none' as const] : []), ...(codec && codec !== 'none' ? [codec] : [])];
    const counter = { bytes: 0 };
    const { entries, imageJson } = await readEntries(file, newcBytes(file, plainEnd, codec, counter));
    return { file, size: positional.size, compression, uncompressedSize: counter.bytes, entries, imageJson };
  } finally {
    await handle.close();
  }
}

/** Every entry (a later one of the same path replacing an earlier one), sorted, and image.json. */
async function readEntries(file: string, newc: AsyncIterable<Buffer>): Promise<Pick<InitramfsContents, 'entries' | 'imageJson'>> {
  const byPath = new Map<string, InitramfsEntry>();
  const links = new Map<string, InitramfsEntry[]>();
  let imageJson: unknown;
  try {
    for await (const record of readNewcArchive(newc)) {
      const entry = toEntry(record);
      byPath.set(entry.path, entry);
      if (record.nlink > 1 && entry.type === 'file') {
        const key = `${record.devMajor}:${record.devMinor}:${record.ino}`;
        links.set(key, [...(links.get(key) ?? []), entry]);
      }
      if (entry.path === IMAGE_JSON_PATH) imageJson = parseImageJson(record.data!, file);
    }
  } catch (error) {
    fileError(file, error);
  }
  shareHardLinkData(links);
  const entries = [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { entries, imageJson };
}

function parseImageJson(data: Buffer, file: string): unknown {
  try {
    return JSON.parse(data.toString('utf8'));
  } catch (error) {
    throw new InputError(`${file}: ${IMAGE_JSON_PATH} is not valid JSON: ${(error as Error).message}`);
  }
}

/** Regular files with their data counted once per hard-link group. */
export function dataFiles(entries: readonly InitramfsEntry[]): SizedFile[] {
  return entries.filter((entry) => entry.type === 'file' && entry.hardLinkOf === undefined).map((entry) => ({ path: entry.path.slice(1), size: entry.size }));
}

export interface InitramfsSummary {
  file: string;
  size: number;
  compression: Compression[];
  uncompressedSize: number;
  /** uncompressedSize / size. */
  compressionRatio: number;
  entries: number;
  entriesByType: Partial<Record<InitramfsEntry['type'], number>>;
  /** Bytes of file data (hard links once). */
  fileBytes: number;
  topLevelDirectories: DirectorySize[];
  largestFiles: SizedFile[];
  agent: { path: string; sha256: string; size: number } | null;
  imageJson: unknown;
}

export function summarize(contents: InitramfsContents, largestCount = 10): InitramfsSummary {
  const files = dataFiles(contents.entries);
  const entriesByType: InitramfsSummary['entriesByType'] = {};
  for (const entry of contents.entries) entriesByType[entry.type] = (entriesByType[entry.type] ?? 0) + 1;
  const agent = contents.entries.find((entry) => entry.path === AGENT_PATH && entry.type === 'file');
  return {
    file: contents.file,
    size: contents.size,
    compression: contents.compression,
    uncompressedSize: contents.uncompressedSize,
    compressionRatio: Number((contents.uncompressedSize / Math.max(1, contents.size)).toFixed(2)),
    entries: contents.entries.length,
    entriesByType,
    fileBytes: files.reduce((sum, file) => sum + file.size, 0),
    topLevelDirectories: sizeByDirectory(files, 1),
    largestFiles: largestFiles(files, largestCount).map((file) => ({ path: `/${file.path}`, size: file.size })),
    agent: agent ? { path: AGENT_PATH, sha256: agent.sha256!, size: agent.size } : null,
    imageJson: contents.imageJson ?? null,
  };
}
