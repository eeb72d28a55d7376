import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newcArchive, planNewcArchive } from '../../src/cpio/writer.ts';
import { readNewcArchive, type CpioRecord, type ReadOptions } from '../../src/cpio/reader.ts';
import { entryTypeOf, TYPE_BITS } from '../../src/cpio/newc.ts';
import { InputError } from '../../src/errors.ts';
import { bytePath, type TreeEntry } from '../../src/tree/entry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const MTIME = 1_700_000_000;
const RANGE_OFFSET = 1000;
const RANGE_SIZE = 3 * 1024 * 1024 + 3;
const LINKED = Buffer.from('one inode, three names\n');
const UTF8_NAME = bytePath('tmp/héllo wörld ☃');
const RAW_NAME = 'tmp/raw\xff name';
const LONG_NAME = `tmp/${'n'.repeat(196)}`;

let work: string;
let layerFile: string;
let rangeContents: Buffer;

function entry(path: string, type: TreeEntry['type'], mode: number, extra: Partial<TreeEntry> = {}): TreeEntry {
  return { path, type, mode, uid: 0, gid: 0, mtime: MTIME, ...extra };
}

/** Every kind of entry, in archive order, with the `ls -l` mode string the tools must show. */
function fixture(): Array<{ entry: TreeEntry; ls: string }> {
  const link = (path: string) => ({ entry: entry(path, 'file', 0o640, { data: LINKED, inode: 42, gid: 6 }), ls: '-rw-r-----' });
  return [
    { entry: entry('bin', 'dir', 0o755), ls: 'drwxr-xr-x' },
    { entry: entry('bin/tool', 'file', 0o4755, { data: { file: layerFile, offset: RANGE_OFFSET, size: RANGE_SIZE } }), ls: '-rwsr-xr-x' },
    { entry: entry('data', 'dir', 0o2775, { uid: 1000, gid: 1000 }), ls: 'drwxrwsr-x' },
    { entry: entry('data/empty', 'file', 0o600, { data: Buffer.alloc(0) }), ls: '-rw-------' },
    { entry: entry('data/odd', 'file', 0o644, { data: Buffer.from('abcde'), uid: 65534, gid: 65534, mtime: MTIME + 7 }), ls: '-rw-r--r--' },
    { entry: entry('data/relative', 'symlink', 0o777, { linkTarget: '../bin/tool' }), ls: 'lrwxrwxrwx' },
    { entry: entry('data/absolute', 'symlink', 0o777, { linkTarget: '/etc/passwd' }), ls: 'lrwxrwxrwx' },
    link('data/link-a'),
    link('data/link-b'),
    link('data/link-c'),
    { entry: entry('dev', 'dir', 0o755), ls: 'drwxr-xr-x' },
    { entry: entry('dev/console', 'char', 0o600, { devMajor: 5, devMinor: 1 }), ls: 'crw-------' },
    { entry: entry('dev/sda', 'block', 0o660, { devMajor: 8, devMinor: 0, gid: 6 }), ls: 'brw-rw----' },
    { entry: entry('dev/pipe', 'fifo', 0o644), ls: 'prw-r--r--' },
    { entry: entry('tmp', 'dir', 0o1777), ls: 'drwxrwxrwt' },
    { entry: entry(UTF8_NAME, 'file', 0o644, { data: Buffer.from('unicode\n') }), ls: '-rw-r--r--' },
    { entry: entry(RAW_NAME, 'file', 0o644, { data: Buffer.from([0xff, 0]) }), ls: '-rw-r--r--' },
    { entry: entry(LONG_NAME, 'file', 0o644, { data: Buffer.from('long') }), ls: '-rw-r--r--' },
  ];
}

const entries = (): TreeEntry[] => fixture().map((item) => item.entry);
const names = (): string[] => entries().map((item) => item.path);

function contentsOf(item: TreeEntry): Buffer {
  if (item.type === 'symlink') return Buffer.from(item.linkTarget ?? '', 'latin1');
  if (item.data === undefined) return Buffer.alloc(0);
  return Buffer.isBuffer(item.data) ? item.data : rangeContents;
}

async function writeArchive(items: TreeEntry[], name: string, options = {}): Promise<string> {
  const path = join(work, name);
  await pipeline(newcArchive(items, options), createWriteStream(path));
  return path;
}

async function readArchive(bytes: Buffer | Buffer[], options: ReadOptions = {}): Promise<CpioRecord[]> {
  const records: CpioRecord[] = [];
  for await (const record of readNewcArchive(Readable.from([bytes].flat()), options)) records.push(record);
  return records;
}

/** Tool output as byte strings, with bsdtar's \ooo escapes turned back into bytes. */
function toolLines(command: string, args: string[], cwd = work): string[] {
  const output = execFileSync(command, args, { cwd, encoding: 'latin1', stdio: ['ignore', 'pipe', 'ignore'] });
  return output
    .replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)))
    .split('\n')
    .filter((line) => line !== '');
}

const latin1Path = (...parts: string[]): Buffer => Buffer.from(parts.join('/'), 'latin1');

function major(rdev: number): number {
  return Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
}
function minor(rdev: number): number {
  return Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
}

beforeAll(async () => {
  ensureTools(TOOLS.cpio, TOOLS.bsdtar);
  work = await mkdtemp(join(tmpdir(), 'rampack-cpio-'));
  layerFile = join(work, 'layer.bin');
  rangeContents = randomBytes(RANGE_SIZE);
  await writeFile(layerFile, Buffer.concat([randomBytes(RANGE_OFFSET), rangeContents, randomBytes(77)]));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('newc writer, checked by GNU cpio and bsdtar', () => {
  let archive: string;
  beforeAll(async () => {
    archive = await writeArchive(entries(), 'all.cpio');
  });

  it('lists every name in order with both tools', () => {
    expect(toolLines('cpio', ['-it', '-F', archive])).toEqual(names());
    expect(toolLines('bsdtar', ['-tf', archive])).toEqual(names());
  });

  it('shows the right types and permission bits in verbose listings', () => {
    const expected = fixture().map((item) => item.ls);
    const cpioLines = toolLines('cpio', ['-itvn', '-F', archive]);
    const bsdtarLines = toolLines('bsdtar', ['-tvf', archive]);
    for (const lines of [cpioLines, bsdtarLines]) {
      expect(lines.map((line) => line.split(' ')[0])).toEqual(expected);
      lines.forEach((line, index) => expect(line).toContain(names()[index]));
    }
    expect(bsdtarLines[names().indexOf('data/link-c')]).toMatch(/^-rw-r-----\s+3 0\s+6\s+23 .* data\/link-c link to data\/link-a$/);
  });

  it('extracts with GNU cpio to the same tree (owners, modes, devices, links, contents)', async () => {
    const target = join(work, 'extracted');
    await mkdir(target);
    execFileSync('cpio', ['-idm', '--no-absolute-filenames', '-F', archive], { cwd: target, stdio: 'ignore' });
    for (const item of entries()) {
      const path = latin1Path(target, item.path);
      const stats = await lstat(path);
      expect(entryTypeOf(stats.mode), item.path).toBe(item.type);
      expect(stats.mode & 0o7777, item.path).toBe(item.mode);
      expect([stats.uid, stats.gid], item.path).toEqual([item.uid, item.gid]);
      if (item.type === 'file') {
        expect((await readFile(path)).equals(contentsOf(item)), item.path).toBe(true);
        expect(Math.floor(stats.mtimeMs / 1000), item.path).toBe(item.mtime);
      }
      if (item.type === 'symlink') expect(await readlink(path, 'latin1'), item.path).toBe(item.linkTarget);
      if (item.type === 'char' || item.type === 'block') {
        expect([major(stats.rdev), minor(stats.rdev)], item.path).toEqual([item.devMajor, item.devMinor]);
      }
    }
    const links = await Promise.all(['link-a', 'link-b', 'link-c'].map((name) => lstat(join(target, 'data', name))));
    expect(new Set(links.map((stats) => stats.ino)).size).toBe(1);
    expect(links[0]!.nlink).toBe(3);
  });

  it('pads the archive to 512 bytes and writes the same bytes for the same input', async () => {
    const first = await readFile(archive);
    const second = await buffer(newcArchive(entries()));
    expect(first.length % 512).toBe(0);
    expect(second.equals(first)).toBe(true);
  });

  it('reports entries and bytes when the stream ends', async () => {
    const stream = newcArchive(entries());
    const bytes = await buffer(stream);
    expect(stream.stats).toEqual({ entries: entries().length, bytes: bytes.length });
  });

  it('writes the same bytes into one buffer and in pieces of a reused scratch buffer', async () => {
    const streamed = await buffer(newcArchive(entries()));
    const plan = planNewcArchive(entries());
    const whole = Buffer.alloc(plan.size);
    plan.writeInto(whole);
    expect(whole.equals(streamed)).toBe(true);
    // 4097: pieces end inside headers, names, padding and file ranges alike.
    const scratch = Buffer.alloc(4097);
    const pieces: Buffer[] = [];
    for (const piece of plan.chunks(scratch)) {
      expect(piece.buffer).toBe(scratch.buffer);
      pieces.push(Buffer.from(piece));
    }
    expect(Buffer.concat(pieces).equals(streamed)).toBe(true);
    expect(pieces.slice(0, -1).every((piece) => piece.length === scratch.length)).toBe(true);
  });

  it('streams file ranges in bounded chunks', async () => {
    const chunks = await newcArchive(entries()).toArray();
    expect(Math.max(...chunks.map((chunk: Buffer) => chunk.length))).toBeLessThanOrEqual(1024 * 1024);
  });
});

describe('newc reader', () => {
  it('reads back what the writer wrote', async () => {
    const items = entries();
    const records = await readArchive(await buffer(newcArchive(items)));
    expect(records.map((record) => record.name)).toEqual(names());
    // Inodes are numbered in output order; the link group shares one and carries its data on the last member.
    expect(records.map((record) => record.ino)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    records.forEach((record, index) => {
      const item = items[index]!;
      const linked = item.inode !== undefined;
      const carried = !linked || item.path === 'data/link-c' ? contentsOf(item) : Buffer.alloc(0);
      expect(record, item.path).toMatchObject({
        mode: TYPE_BITS[item.type] | item.mode,
        uid: item.uid,
        gid: item.gid,
        mtime: item.mtime,
        nlink: linked ? 3 : item.type === 'dir' ? 2 : 1,
        size: carried.length,
        rdevMajor: item.devMajor ?? 0,
        rdevMinor: item.devMinor ?? 0,
      });
      expect(record.data?.equals(carried), item.path).toBe(true);
    });
  });

  it('hashes or skips data on request', async () => {
    const bytes = await buffer(newcArchive(entries()));
    const tool = (await readArchive(bytes, { data: 'sha256' }))[1]!;
    expect(tool.sha256).toBe(createHashHex(rangeContents));
    const skipped = await readArchive(bytes, { data: 'skip' });
    expect(skipped.every((record) => record.data === undefined && record.sha256 === undefined)).toBe(true);
  });

  it('reads concatenated archives with NUL padding between them, split into odd chunks', async () => {
    const one = await buffer(newcArchive([entry('a', 'dir', 0o755)]));
    const two = await buffer(newcArchive([entry('b', 'file', 0o644, { data: Buffer.from('bee') })]));
    const whole = Buffer.concat([one, Buffer.alloc(8), two]);
    const chunks = Array.from({ length: Math.ceil(whole.length / 7) }, (_, index) => whole.subarray(index * 7, index * 7 + 7));
    const records = await readArchive(chunks);
    expect(records.map((record) => [record.name, record.data?.toString()])).toEqual([['a', ''], ['b', 'bee']]);
  });

  it('reads archives made by GNU cpio, including the crc format', async () => {
    const source = join(work, 'gnu-source');
    await mkdir(join(source, 'sub'), { recursive: true });
    await writeFile(join(source, 'sub', 'file'), 'from gnu cpio\n');
    for (const format of ['newc', 'crc']) {
      const made = execFileSync('cpio', ['-o', '-H', format], { cwd: source, input: 'sub\nsub/file\n', stdio: ['pipe', 'pipe', 'ignore'] });
      const records = await readArchive(made);
      expect(records.map((record) => [record.name, record.data?.toString()])).toEqual([['sub', ''], ['sub/file', 'from gnu cpio\n']]);
    }
  });

  it('names the byte offset of bad magic and of truncation', async () => {
    const bytes = await buffer(newcArchive([entry('a', 'dir', 0o755), entry('a/f', 'file', 0o644, { data: Buffer.from('data!') })]));
    const corrupt = Buffer.from(bytes);
    corrupt.write('070707', 112, 'latin1');
    await expect(readArchive(corrupt)).rejects.toThrow(/bad cpio magic "070707" at byte offset 112/);
    await expect(readArchive(bytes.subarray(0, 240))).rejects.toThrow(/truncated at byte offset 240/);
    await expect(readArchive(Buffer.alloc(0))).rejects.toThrow(InputError);
  });
});

describe('newc writer errors and limits', () => {
  it('refuses an entry that comes before its parent directory', () => {
    expect(() => newcArchive([entry('a/b', 'file', 0o644)])).toThrow(/"a\/b" comes before its parent directory "a"/);
    expect(() => newcArchive([entry('a', 'file', 0o644), entry('a/b', 'file', 0o644)])).toThrow(InputError);
  });

  it('refuses the end-of-archive name and hard links of mixed types', () => {
    expect(() => newcArchive([entry('TRAILER!!!', 'file', 0o644)])).toThrow(/end-of-archive marker/);
    const mixed = [entry('f', 'file', 0o644, { inode: 1 }), entry('p', 'fifo', 0o644, { inode: 1 })];
    expect(() => newcArchive(mixed)).toThrow(/"p" is a hard link of a file but is itself a fifo/);
  });

  it('accepts a 4095-byte name and refuses a 4096-byte one', async () => {
    const records = await readArchive(await buffer(newcArchive([entry('x'.repeat(4095), 'file', 0o644)])));
    expect(records[0]!.name.length).toBe(4095);
    expect(() => newcArchive([entry('y'.repeat(4096), 'file', 0o644)])).toThrow(/is 4096 bytes long/);
    // Error lines stay short: the path is cut in the middle.
    expect(() => newcArchive([entry('z'.repeat(100_000), 'file', 0o644)])).toThrow(/^path "z{60}…z{60}" is 100000 bytes long: the kernel unpacks at most 4095 \(PATH_MAX\)$/);
  });

  it('accepts a 4095-byte symlink target and refuses a 4096-byte one, which the kernel would skip', async () => {
    const records = await readArchive(await buffer(newcArchive([entry('ok', 'symlink', 0o777, { linkTarget: 't'.repeat(4095) })])));
    expect(records[0]!.size).toBe(4095);
    expect(() => newcArchive([entry('long', 'symlink', 0o777, { linkTarget: 't'.repeat(4096) })])).toThrow(
      /symlink "long" has a target of 4096 bytes: the kernel unpacks at most 4095 \(PATH_MAX\)/,
    );
  });

  it('refuses a file of 4 GiB without reading it', async () => {
    const sparse = join(work, 'sparse.bin');
    await writeFile(sparse, '');
    await truncate(sparse, 2 ** 32 + 8);
    const huge = entry('huge', 'file', 0o644, { data: { file: sparse, offset: 8, size: 2 ** 32 } });
    expect(() => newcArchive([huge])).toThrow(/file "huge" is 4294967296 bytes: newc cannot hold a file of 4 GiB or more/);
  });

  it('fails the stream when a file is shorter than its range', async () => {
    const short = entry('short', 'file', 0o644, { data: { file: layerFile, offset: RANGE_OFFSET, size: 10 * 1024 * 1024 } });
    await expect(buffer(newcArchive([short]))).rejects.toThrow(/ends at byte .* before the end of "short"/);
  });

  it('clamps mtimes to SOURCE_DATE_EPOCH and into newc\'s u32 field: before 1970 to 0, past 2106 to 2^32-1', async () => {
    const items = [entry('late', 'file', 0o644, { mtime: 2_000_000_000 }), entry('early', 'file', 0o644, { mtime: -5 })];
    const records = await readArchive(await buffer(newcArchive(items, { clampMtime: 1_500_000_000 })));
    expect(records.map((record) => record.mtime)).toEqual([1_500_000_000, 0]);
    const times = [-(2 ** 40), -1, -0.5, 0, 2 ** 32 - 1, 2 ** 32 - 0.5, 2 ** 32, 2 ** 50];
    const unclamped = await readArchive(await buffer(newcArchive(times.map((mtime, index) => entry(`t${index}`, 'file', 0o644, { mtime })))));
    expect(unclamped.map((record) => record.mtime)).toEqual([0, 0, 0, 0, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1]);
    const future = entry('future', 'file', 0o644, { mtime: 2 ** 32 });
    const clamped = await readArchive(await buffer(newcArchive([future], { clampMtime: MTIME })));
    expect(clamped[0]!.mtime).toBe(MTIME);
  });
});

function createHashHex(data: Buffer): string {
  return execFileSync('sha256sum', { input: data, encoding: 'latin1' }).split(' ')[0]!;
}
