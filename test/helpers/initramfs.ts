/**
 * Reading rampack's output with the Debian tools as oracles. An initramfs is
 * several newc archives concatenated (docs/initramfs-layout.md); GNU cpio and
 * bsdtar stop at the first TRAILER!!!, so the tests cut the decompressed
 * stream into its archives and hand each to the tool, as the kernel reads them.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeHeaderFields, HEADER_SIZE, paddingFor, TRAILER_NAME } from '../../src/cpio/newc.ts';

/** The whole initramfs decompressed (gzip members and zstd frames decode as one stream). */
export function decompressedInitramfs(file: string): Buffer {
  const head = readFileSync(file).subarray(0, 4);
  const tool = head[0] === 0x1f && head[1] === 0x8b ? 'gzip' : head.readUInt32LE(0) === 0xfd2fb528 ? 'zstd' : undefined;
  return tool ? execFileSync(tool, ['-dc', file], { maxBuffer: 2 ** 31 }) : readFileSync(file);
}

/** Cuts a decompressed initramfs into its archives, each ending after its trailer. */
export function splitArchives(bytes: Buffer): Buffer[] {
  const archives: Buffer[] = [];
  let start = 0;
  let at = 0;
  while (at < bytes.length) {
    if (at === start && bytes[at] === 0) {
      start = at += 4; // NUL padding between archives
      continue;
    }
    const header = decodeHeaderFields(bytes.subarray(at, at + HEADER_SIZE));
    if ('badField' in header) throw new Error(`no newc header at byte ${at}: bad ${header.badField}`);
    const name = bytes.subarray(at + HEADER_SIZE, at + HEADER_SIZE + header.namesize - 1).toString('latin1');
    at += HEADER_SIZE + header.namesize;
    at += paddingFor(at);
    at += header.filesize + paddingFor(header.filesize);
    if (name === TRAILER_NAME) {
      archives.push(bytes.subarray(start, at));
      while (at < bytes.length && bytes[at] === 0) at++;
      at -= at % 4;
      start = at;
    }
  }
  return archives;
}

/** Extracts every archive of an initramfs with GNU cpio (as root: owners and devices kept); returns the directory. */
export function extractWithCpio(file: string, into = mkdtempSync(join(tmpdir(), 'rampack-extract-'))): string {
  for (const archive of splitArchives(decompressedInitramfs(file))) {
    execFileSync('cpio', ['-idmu', '--quiet', '--no-absolute-filenames'], { cwd: into, input: archive });
  }
  return into;
}

/** `bsdtar -tv` of every archive of an initramfs, concatenated. */
export function listWithBsdtar(file: string): string {
  return splitArchives(decompressedInitramfs(file))
    .map((archive) => execFileSync('bsdtar', ['-tvf', '-'], { input: archive, maxBuffer: 1 << 26 }).toString())
    .join('');
}

/** One file's contents, read by bsdtar from whichever archive holds it. */
export function readWithBsdtar(file: string, path: string): Buffer {
  for (const archive of splitArchives(decompressedInitramfs(file)).reverse()) {
    const listing = execFileSync('bsdtar', ['-tf', '-'], { input: archive, maxBuffer: 1 << 26 }).toString().split('\n');
    if (listing.includes(path)) return execFileSync('bsdtar', ['-xOf', '-', path], { input: archive, maxBuffer: 1 << 30 });
  }
  throw new Error(`${path} is in no archive of ${file}`);
}
