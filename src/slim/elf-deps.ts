/**
 * What a kept program needs to start, read from its bytes without running it:
 * the ELF interpreter (PT_INTERP), the shared libraries it names (DT_NEEDED,
 * searched like ld.so does: RPATH/RUNPATH, then ld.so.conf, then the default
 * directories), and a script's "#!" interpreter. The slim tree keeps these for
 * every file it keeps, so a library or extension module kept by a glob but
 * never loaded during the trace still finds its dependencies.
 */
import { open } from 'node:fs/promises';
import { readElfInfo } from '../agent/elf.ts';
import type { Arch } from '../oci/content.ts';
import type { TreeEntry } from '../tree/entry.ts';

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_STRTAB = 5n;
const DT_RPATH = 15n;
const DT_RUNPATH = 29n;
/** Enough for the ELF header and the program headers of any ordinary binary, and a "#!" line. */
const HEAD_BYTES = 4096;

/** Reads bytes of a tree file's contents (in memory, or a range of a layer file on disk). */
export async function readEntryBytes(entry: TreeEntry, offset: number, length: number): Promise<Buffer> {
  const data = entry.data;
  if (data === undefined) return Buffer.alloc(0);
  if (Buffer.isBuffer(data)) return data.subarray(offset, offset + length);
  const wanted = Math.max(0, Math.min(length, data.size - offset));
  const handle = await open(data.file);
  try {
    const buffer = Buffer.alloc(wanted);
    const { bytesRead } = await handle.read(buffer, 0, wanted, data.offset + offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

interface Segment {
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

function programHeaders(head: Buffer): Segment[] {
  const phoff = Number(head.readBigUInt64LE(32));
  const phentsize = head.readUInt16LE(54);
  const segments: Segment[] = [];
  for (let i = 0; i < head.readUInt16LE(56); i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > head.length) break;
    segments.push({
      type: head.readUInt32LE(at),
      offset: Number(head.readBigUInt64LE(at + 8)),
      vaddr: Number(head.readBigUInt64LE(at + 16)),
      filesz: Number(head.readBigUInt64LE(at + 32)),
    });
  }
  return segments;
}

/** File offset of a virtual address, through the PT_LOAD segment that maps it. */
function fileOffset(segments: readonly Segment[], vaddr: number): number | undefined {
  const load = segments.find((s) => s.type === PT_LOAD && vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz);
  return load === undefined ? undefined : load.offset + (vaddr - load.vaddr);
}

export interface ProgramNeeds {
  /** Absolute paths: the ELF interpreter, or a script's interpreter. */
  interpreters: string[];
  /** DT_NEEDED names (e.g. "libssl.so.3"). */
  libraries: string[];
  /** RUNPATH/RPATH directories, $ORIGIN not yet replaced. */
  searchPaths: string[];
}

const NOTHING: ProgramNeeds = { interpreters: [], libraries: [], searchPaths: [] };

/** A 64-bit little-endian ELF of `arch` (others cannot run on the image's arch anyway), or a script. */
export async function programNeeds(entry: TreeEntry, arch: Arch): Promise<ProgramNeeds> {
  const head = await readEntryBytes(entry, 0, HEAD_BYTES);
  if (head.subarray(0, 2).toString('latin1') === '#!') {
    const interpreter = /^#!\s*(\/\S+)/.exec(head.subarray(0, head.indexOf(10) < 0 ? head.length : head.indexOf(10)).toString('latin1'))?.[1];
    return interpreter === undefined ? NOTHING : { ...NOTHING, interpreters: [interpreter] };
  }
  if (head.length < 64 || head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return NOTHING;
  let info;
  try {
    info = readElfInfo(head, entry.path);
  } catch {
    return NOTHING; // an object file, or another machine's binary
  }
  if (info.arch !== arch) return NOTHING;
  const segments = programHeaders(head);
  const dynamic = segments.find((s) => s.type === PT_DYNAMIC);
  const interpreters = info.interpreter ? [info.interpreter] : [];
  if (dynamic === undefined) return { ...NOTHING, interpreters };
  const table = await readEntryBytes(entry, dynamic.offset, dynamic.filesz);
  const needed: bigint[] = [];
  const paths: bigint[] = [];
  let strtab: number | undefined;
  for (let at = 0; at + 16 <= table.length; at += 16) {
    const tag = table.readBigInt64LE(at);
    const value = table.readBigUInt64LE(at + 8);
    if (tag === DT_NULL) break;
    if (tag === DT_NEEDED) needed.push(value);
    else if (tag === DT_RPATH || tag === DT_RUNPATH) paths.push(value);
    else if (tag === DT_STRTAB) strtab = fileOffset(segments, Number(value));
  }
  if (strtab === undefined) return { ...NOTHING, interpreters };
  const stringAt = async (offset: bigint) => {
    const bytes = await readEntryBytes(entry, strtab! + Number(offset), 4096);
    const end = bytes.indexOf(0);
    return bytes.subarray(0, end < 0 ? bytes.length : end).toString('latin1');
  };
  const libraries = await Promise.all(needed.map(stringAt));
  const searchPaths = (await Promise.all(paths.map(stringAt))).flatMap((list) => list.split(':')).filter(Boolean);
  return { interpreters, libraries, searchPaths };
}

/** Debian's multiarch directory name of an arch. */
const MULTIARCH: Record<Arch, string> = { x86_64: 'x86_64-linux-gnu', aarch64: 'aarch64-linux-gnu' };

/** Where ld.so looks after RPATH/RUNPATH and ld.so.cache (the cache is built from ld.so.conf): its trusted directories. */
export function defaultLibraryDirs(arch: Arch): string[] {
  const triple = MULTIARCH[arch];
  return [`lib/${triple}`, `usr/lib/${triple}`, 'lib64', 'usr/lib64', 'lib', 'usr/lib', 'usr/local/lib'];
}

/** Directories listed in ld.so.conf-style text (include lines are followed by the caller). */
export function ldConfDirectories(text: string): { dirs: string[]; includes: string[] } {
  const dirs: string[] = [];
  const includes: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') continue;
    if (line.startsWith('include ')) includes.push(line.slice('include '.length).trim());
    else if (line.startsWith('/')) dirs.push(line.replace(/^\/+|\/+$/g, ''));
  }
  return { dirs, includes };
}

