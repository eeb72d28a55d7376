import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile, link } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { type LayerEntry, TarIndexer, normalizeLayerPath } from '../../src/tar/tar-index.ts';
import { padBlock, paxBody, TAR_END, tarBytes, tarHeader } from '../helpers/oci-builder.ts';
import { TOOLS, ensureTools } from '../helpers/system.ts';

const GNU_TAR = { command: 'tar', pkg: 'tar' };

/** Indexes `tar`, fed in chunks of `chunkSize` bytes to cross every boundary. */
function indexTar(tar: Buffer, chunkSize = tar.length): LayerEntry[] {
  return indexWithWarnings(tar, chunkSize).entries;
}

function indexWithWarnings(tar: Buffer, chunkSize = tar.length): { entries: LayerEntry[]; warnings: string[] } {
  const indexer = new TarIndexer('layer test');
  for (let at = 0; at < tar.length; at += chunkSize) indexer.write(tar.subarray(at, at + chunkSize));
  return { entries: indexer.end(), warnings: indexer.warnings() };
}

/** A PAX 'x' (or global 'g') header entry; keys and values may be raw bytes. */
function paxEntry(records: [string | Buffer, string | Buffer][], typeflag = 'x'): Buffer {
  const body = Buffer.concat(records.map(([key, value]) => paxRecord(key, value)));
  return Buffer.concat([tarHeader({ name: 'PaxHeader/entry', typeflag, size: body.length }), padBlock(body)]);
}

function paxRecord(key: string | Buffer, value: string | Buffer): Buffer {
  const rest = Buffer.concat([Buffer.from(' '), Buffer.from(key), Buffer.from('='), Buffer.from(value), Buffer.from('\n')]);
  let length = rest.length + 1;
  while (String(length).length + rest.length !== length) length++;
  return Buffer.concat([Buffer.from(String(length)), rest]);
}

/** A GNU long name ('L') or long link name ('K') entry. */
function gnuLongEntry(name: string, typeflag: 'L' | 'K'): Buffer {
  const body = Buffer.from(`${name}\0`);
  return Buffer.concat([tarHeader({ name: '././@LongLink', typeflag, size: body.length }), padBlock(body)]);
}

function fileEntry(name: string, data = '', extra: Partial<Parameters<typeof tarHeader>[0]> = {}): Buffer {
  return Buffer.concat([tarHeader({ name, size: Buffer.byteLength(data), ...extra }), padBlock(Buffer.from(data))]);
}

/** What a peer lists (`-tf`, or `-tvf` with `verbose`), whatever its exit status: some warn and go on. */
function peerList(command: 'tar' | 'bsdtar', tar: Buffer, verbose = false): string[] {
  const args = verbose ? ['--numeric-owner', ...(command === 'tar' ? ['--full-time'] : []), '-tvf', '-'] : ['-tf', '-'];
  const result = spawnSync(command, args, { input: tar, encoding: 'latin1' });
  return result.stdout.split('\n').filter((line) => line !== '');
}

function peerFails(command: 'tar' | 'bsdtar', tar: Buffer): boolean {
  return spawnSync(command, ['-tf', '-'], { input: tar }).status !== 0;
}

function dataOf(tar: Buffer, entry: LayerEntry): string {
  return tar.toString('latin1', entry.dataOffset, entry.dataOffset + entry.size);
}

function byPath(entries: LayerEntry[]): Map<string, LayerEntry> {
  return new Map(entries.map((entry) => [entry.path, entry]));
}


describe('TarIndexer', () => {
  let workDir: string;

  beforeAll(async () => {
    ensureTools(GNU_TAR, TOOLS.bsdtar);
    workDir = await mkdtemp(join(tmpdir(), 'rampack-tar-index-'));
  });

  afterAll(async () => {
    await rm(workDir, { recursive: true, force: true });
  });

  it('indexes every entry type with metadata and data offsets (tar-stream archive)', async () => {
    const longDir = 'd'.repeat(90);
    const tar = await tarBytes([
      { name: './etc/', type: 'directory', mode: 0o1777, mtime: 1_600_000_000 },
      { name: '/etc/passwd', content: 'root:x:0:0\n', uid: 12, gid: 34, mode: 0o4755 },
      { name: 'etc/empty', content: '' },
      { name: 'etc/link', type: 'symlink', linkname: '../usr/bin/../lib' },
      { name: 'etc/hard', type: 'link', linkname: './etc/passwd' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 },
      { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 },
      { name: 'run/pipe', type: 'fifo', mode: 0o600 },
      { name: `${longDir}/${'f'.repeat(90)}`, content: 'ustar prefix' },
      { name: `x/${'p'.repeat(150)}`, content: 'pax path' },
      { name: 'a//b/./../c', content: 'normalised' },
    ]);
    for (const chunkSize of [tar.length, 1, 511, 513]) {
      const entries = byPath(indexTar(tar, chunkSize));
      expect([...entries.keys()]).toEqual([
        'etc',
        'etc/passwd',
        'etc/empty',
        'etc/link',
        'etc/hard',
        'dev/null',
        'dev/sda',
        'run/pipe',
        `${longDir}/${'f'.repeat(90)}`,
        `x/${'p'.repeat(150)}`,
        'a/c',
      ]);
      expect(entries.get('etc')).toMatchObject({ type: 'dir', mode: 0o1777, mtime: 1_600_000_000, size: 0 });
      const passwd = entries.get('etc/passwd')!;
      expect(passwd).toMatchObject({ type: 'file', mode: 0o4755, uid: 12, gid: 34, size: 11 });
      expect(dataOf(tar, passwd)).toBe('root:x:0:0\n');
      expect(entries.get('etc/empty')).toMatchObject({ type: 'file', size: 0 });
      expect(entries.get('etc/link')).toMatchObject({ type: 'symlink', linkname: '../usr/bin/../lib', size: 0 });
      expect(entries.get('etc/hard')).toMatchObject({ type: 'hardlink', linkname: 'etc/passwd', size: 0 });
      expect(entries.get('dev/null')).toMatchObject({ type: 'char', devMajor: 1, devMinor: 3 });
      expect(entries.get('dev/sda')).toMatchObject({ type: 'block', devMajor: 8, devMinor: 0 });
      expect(entries.get('run/pipe')).toMatchObject({ type: 'fifo', mode: 0o600 });
      expect(dataOf(tar, entries.get(`${longDir}/${'f'.repeat(90)}`)!)).toBe('ustar prefix');
      expect(dataOf(tar, entries.get(`x/${'p'.repeat(150)}`)!)).toBe('pax path');
      expect(dataOf(tar, entries.get('a/c')!)).toBe('normalised');
    }
  });

  it('reads GNU long names, long link targets and base-256 ids (GNU tar archive)', async () => {
    const source = join(workDir, 'gnu');
    const longName = `${'n'.repeat(120)}.txt`;
    const longTarget = `/${'t'.repeat(150)}`;
    await mkdir(source, { recursive: true });
    await writeFile(join(source, longName), 'long name data');
    await symlink(longTarget, join(source, 'symlink'));
    await link(join(source, longName), join(source, `hard-${'h'.repeat(110)}`));
    const tar = execFileSync('tar', [
      ...['-C', source, '--format=gnu', '--sort=name', '--owner=u:3000000', '--group=g:4000000'],
      ...['--mtime=@1234567890', '-cf', '-', '.'],
    ]);
    const entries = byPath(indexTar(tar, 100));
    // Sorted by name, "hard-…" is stored first with the data and the other name links to it.
    const file = entries.get(`hard-${'h'.repeat(110)}`)!;
    expect(file).toMatchObject({ type: 'file', uid: 3_000_000, gid: 4_000_000, mtime: 1_234_567_890, size: 14 });
    expect(dataOf(tar, file)).toBe('long name data');
    expect(entries.get('symlink')).toMatchObject({ type: 'symlink', linkname: longTarget });
    expect(entries.get(longName)).toMatchObject({ type: 'hardlink', linkname: `hard-${'h'.repeat(110)}` });
    expect(entries.has('')).toBe(false); // the "./" root entry carries no tree entry
  });

  it('reads PAX size, ids and fractional mtime (GNU tar posix archive)', async () => {
    const source = join(workDir, 'posix');
    await mkdir(source, { recursive: true });
    await writeFile(join(source, 'frac'), 'pax data');
    await utimes(join(source, 'frac'), 1_700_000_000.75, 1_700_000_000.75);
    const tar = execFileSync('tar', ['-C', source, '--format=posix', '--owner=u:5000000', '--group=g:6000000', '-cf', '-', 'frac']);
    const [entry] = indexTar(tar, 64);
    expect(entry).toMatchObject({ path: 'frac', uid: 5_000_000, gid: 6_000_000, mtime: 1_700_000_000, size: 8 });
    expect(dataOf(tar, entry!)).toBe('pax data');
  });

  it('reads SCHILY and LIBARCHIVE xattrs and negative fractional mtimes', async () => {
    const perFile = await tarBytes([
      {
        name: 'caps',
        content: 'x',
        pax: {
          'SCHILY.xattr.security.capability': 'cap-bytes',
          'LIBARCHIVE.xattr.user.with%3Dequals': Buffer.from([0, 1, 0xff]).toString('base64'),
          'SCHILY.xattr.user.hé': 'utf-8 name',
          mtime: '-1.5',
        },
      },
    ]);
    const [caps] = indexTar(perFile);
    expect(caps!.xattrs).toEqual({
      'security.capability': Buffer.from('cap-bytes'),
      'user.with=equals': Buffer.from([0, 1, 0xff]),
      'user.hé': Buffer.from('utf-8 name'),
    });
    expect(caps!.mtime).toBe(-2);
  });

  it('reads v7 plain and contiguous files, v7 directories and archives without an end marker', () => {
    const tar = Buffer.concat([
      tarHeader({ name: 'old/', typeflag: '\0', magic: '' }),
      tarHeader({ name: 'old/file', typeflag: '\0', size: 3, magic: '' }),
      padBlock(Buffer.from('v7!')),
      tarHeader({ name: 'contiguous', typeflag: '7', size: 2 }),
      padBlock(Buffer.from('c7')),
    ]);
    const entries = indexTar(tar);
    expect(entries.map(({ path, type }) => [path, type])).toEqual([
      ['old', 'dir'],
      ['old/file', 'file'],
      ['contiguous', 'file'],
    ]);
    expect(dataOf(tar, entries[1]!)).toBe('v7!');
    expect(dataOf(tar, entries[2]!)).toBe('c7');
  });

  it('rejects a header with a bad checksum, naming the layer and offset', async () => {
    const tar = await tarBytes([{ name: 'a', content: 'aaaa' }, { name: 'b', content: 'b' }]);
    tar[1024 + 10] ^= 0x01; // second header (after a's header and data block)
    expect(() => indexTar(tar)).toThrow(InputError);
    expect(() => indexTar(tar)).toThrow(/layer test .*checksum mismatch at offset 1024/);
  });

  it('rejects truncated archives', async () => {
    const tar = await tarBytes([{ name: 'a', content: 'x'.repeat(1000) }]);
    for (const length of [100, 512 + 500, 512 + 1000]) {
      expect(() => indexTar(tar.subarray(0, length))).toThrow(/layer test is truncated/);
    }
    const body = paxBody({ path: 'orphan' });
    const orphanPax = Buffer.concat([tarHeader({ name: 'PaxHeader/orphan', typeflag: 'x', size: body.length }), padBlock(body)]);
    expect(() => indexTar(orphanPax)).toThrow(/layer test is truncated/);
  });

  it('rejects paths that climb above the root, naming the layer and path', async () => {
    const tar = await tarBytes([{ name: 'a/../../etc/passwd', content: 'x' }]);
    expect(() => indexTar(tar)).toThrow(/layer test: tar entry "a\/..\/..\/etc\/passwd" at offset 0 points outside the root/);
    const hardlink = await tarBytes([{ name: 'ok', type: 'link', linkname: '../outside' }]);
    expect(() => indexTar(hardlink)).toThrow(/"..\/outside" .*points outside the root/);
  });

  it('rejects unknown entry types', () => {
    const tar = Buffer.concat([tarHeader({ name: 'weird', typeflag: 'Q' }), TAR_END]);
    expect(() => indexTar(tar)).toThrow(/"weird" at offset 0 has unsupported tar type 'Q'/);
  });
});

describe('TarIndexer: tar dialects, with GNU tar and bsdtar as oracles', () => {
  let workDir: string;

  beforeAll(async () => {
    ensureTools(GNU_TAR, TOOLS.bsdtar);
    workDir = await mkdtemp(join(tmpdir(), 'rampack-tar-dialects-'));
  });

  afterAll(async () => {
    await rm(workDir, { recursive: true, force: true });
  });

  it('uses the last of several PAX headers before an entry, without merging them', () => {
    const tar = Buffer.concat([
      paxEntry([['path', 'first/path'], ['uid', '5'], ['SCHILY.xattr.user.first', 'x']]),
      paxEntry([['mtime', '1000']]),
      fileEntry('hdrname', 'abc'),
      fileEntry('next'),
    ]);
    for (const chunkSize of [tar.length, 7, 512]) {
      const entries = indexTar(tar, chunkSize);
      expect(entries.map((entry) => entry.path)).toEqual(['hdrname', 'next']);
      expect(entries[0]).toMatchObject({ uid: 0, mtime: 1000, size: 3 });
      expect(entries[0]!.xattrs).toBeUndefined();
    }
    expect(peerList('tar', tar)).toEqual(['hdrname', 'next']);
    expect(peerList('bsdtar', tar)).toEqual(['hdrname', 'next']);
    expect(peerList('tar', tar, true)[0]).toMatch(/ 0\/0 +3 1970-01-01 00:16:40 hdrname$/);

    const twoPaths = Buffer.concat([paxEntry([['path', 'p1'], ['uid', '5']]), paxEntry([['path', 'p2']]), fileEntry('hdrname', 'abc'), TAR_END]);
    expect(indexTar(twoPaths).map(({ path, uid }) => [path, uid])).toEqual([['p2', 0]]);
    expect(peerList('tar', twoPaths)).toEqual(['p2']);
    expect(peerList('bsdtar', twoPaths)).toEqual(['p2']);
  });

  it('uses the last GNU long name, and a GNU long name or link over PAX path and linkpath, as Go does', () => {
    const twoLong = Buffer.concat([gnuLongEntry('L-one', 'L'), gnuLongEntry('L-two', 'L'), fileEntry('hdrname', 'abc'), TAR_END]);
    expect(indexTar(twoLong).map((entry) => entry.path)).toEqual(['L-two']);
    expect(peerList('tar', twoLong)).toEqual(['L-two']);
    expect(peerList('bsdtar', twoLong)).toEqual(['L-two']);

    const longThenPax = Buffer.concat([gnuLongEntry('long-name', 'L'), paxEntry([['path', 'pax-path']]), fileEntry('hdrname', 'abc'), TAR_END]);
    const paxThenLong = Buffer.concat([paxEntry([['path', 'pax-path']]), gnuLongEntry('long-name', 'L'), fileEntry('hdrname', 'abc'), TAR_END]);
    for (const tar of [longThenPax, paxThenLong]) {
      const { entries, warnings } = indexWithWarnings(tar);
      expect(entries.map((entry) => entry.path)).toEqual(['long-name']);
      expect(warnings).toEqual(["layer test: took a GNU long name over a different PAX one, as Go's archive/tar does: \"long-name\" over \"pax-path\""]);
      // The peers disagree: GNU tar always takes the PAX path, bsdtar the first of the two.
      expect(peerList('tar', tar)).toEqual(['pax-path']);
    }
    expect(peerList('bsdtar', longThenPax)).toEqual(['long-name']);

    const link = Buffer.concat([
      gnuLongEntry('K-target', 'K'),
      paxEntry([['linkpath', 'pax-target']]),
      tarHeader({ name: 'sl', typeflag: '2', linkname: 'hdr-target' }),
      TAR_END,
    ]);
    expect(indexTar(link)[0]).toMatchObject({ path: 'sl', type: 'symlink', linkname: 'K-target' });
    expect(peerList('bsdtar', link, true)[0]).toMatch(/sl -> K-target$/);
  });

  it('ignores global PAX headers, as containerd, Docker and bsdtar do, warning when they would change entries', () => {
    const tar = Buffer.concat([
      paxEntry([['comment', 'git archive id'], ['uid', '4242'], ['mtime', '77'], ['SCHILY.xattr.user.all', 'yes']], 'g'),
      fileEntry('a', 'a'),
      paxEntry([['uid', '7']]),
      fileEntry('b', 'b'),
      TAR_END,
    ]);
    const { entries, warnings } = indexWithWarnings(tar, 3);
    expect(entries.map(({ path, uid, mtime, xattrs }) => ({ path, uid, mtime, xattrs }))).toEqual([
      { path: 'a', uid: 0, mtime: 1_700_000_000, xattrs: undefined },
      { path: 'b', uid: 7, mtime: 1_700_000_000, xattrs: undefined },
    ]);
    expect(warnings).toEqual(['layer test: ignored a global PAX header (as containerd, Docker and bsdtar do): records "uid", "mtime", "SCHILY.xattr.user.all"']);
    const bsdtarUids = peerList('bsdtar', tar, true).map((line) => line.split(/ +/)[2]);
    expect(bsdtarUids).toEqual(['0', '7']);

    const commentOnly = Buffer.concat([paxEntry([['comment', 'c0ffee']], 'g'), fileEntry('a', 'a'), TAR_END]);
    expect(indexWithWarnings(commentOnly).warnings).toEqual([]);
  });

  it('lets PAX records override size, uid, gid and mtime (names ignored), as GNU tar lists them', () => {
    const tar = Buffer.concat([
      paxEntry([['size', '3'], ['uid', '70000000'], ['gid', '80000000'], ['mtime', '123.5'], ['uname', 'bob'], ['gname', 'staff']]),
      tarHeader({ name: 'o', size: 0 }),
      padBlock(Buffer.from('xyz')),
      fileEntry('after', 'after data'),
      TAR_END,
    ]);
    const [entry, after] = indexTar(tar, 100);
    expect(entry).toMatchObject({ path: 'o', size: 3, uid: 70_000_000, gid: 80_000_000, mtime: 123 });
    expect(dataOf(tar, entry!)).toBe('xyz');
    expect(dataOf(tar, after!)).toBe('after data');
    expect(peerList('tar', tar, true)[0]).toMatch(/ 70000000\/80000000 3 1970-01-01 00:02:03.5 o$/);
  });

  it('refuses PAX records with bad lengths or shapes, as GNU tar and bsdtar flag them', () => {
    const bodies = ['0x1f path=abcdefghijklmnopq\n', '+19 path=abcdefghi\n', '1e1 a=bcdef\n', '0 path=x\n', '99 path=x\n', '12 pathxyz12\n', '12 path=xyzz', '-12 path=xy\n'];
    for (const text of bodies) {
      const body = Buffer.from(text);
      const tar = Buffer.concat([tarHeader({ name: 'PaxHeader/x', typeflag: 'x', size: body.length }), padBlock(body), fileEntry('f'), TAR_END]);
      expect(() => indexTar(tar), text).toThrow(/layer test: malformed PAX extended header record at byte 0/);
      expect(peerFails('tar', tar), text).toBe(true);
      expect(peerFails('bsdtar', tar), text).toBe(true);
    }
    const badValue = Buffer.concat([paxEntry([['uid', '12abc']]), fileEntry('f'), TAR_END]);
    expect(() => indexTar(badValue)).toThrow(/invalid PAX uid value "12abc"/);
    const hugeValue = Buffer.concat([paxEntry([['size', '99999999999999999999']]), fileEntry('f'), TAR_END]);
    expect(() => indexTar(hugeValue)).toThrow(InputError);
  });

  it('drops xattr records that Linux cannot hold (NUL, empty, not UTF-8, too long), with one warning naming the layer and file', () => {
    const records: [string | Buffer, string | Buffer][] = [
      ['SCHILY.xattr.user.nul\0x', 'a'],
      ['SCHILY.xattr.', 'empty name'],
      [Buffer.concat([Buffer.from('SCHILY.xattr.user.'), Buffer.from([0xff, 0xfe])]), 'latin1 name'],
      ['LIBARCHIVE.xattr.user.%00hidden', Buffer.from('b').toString('base64')],
      [`SCHILY.xattr.user.${'n'.repeat(300)}`, 'long name'],
      ['SCHILY.xattr.user.big', Buffer.alloc(65 * 1024, 1)],
      ['LIBARCHIVE.xattr.user.not64', 'not base64!'],
      ['SCHILY.xattr.user.ok', 'fine'],
    ];
    const tar = Buffer.concat([paxEntry(records), fileEntry('odd', 'x'), paxEntry([records[0]!]), fileEntry('second', 'y'), TAR_END]);
    const { entries, warnings } = indexWithWarnings(tar);
    expect(entries.map((entry) => [entry.path, entry.xattrs])).toEqual([
      ['odd', { 'user.ok': Buffer.from('fine') }],
      ['second', undefined],
    ]);
    expect(warnings).toEqual([
      'layer test: dropped extended attributes that Linux cannot hold 8 times (first: "odd" "SCHILY.xattr.user.nul\\u0000x" (NUL byte in the name))',
    ]);
  });

  it('refuses a PAX path or linkpath holding a NUL, as Go does', () => {
    for (const key of ['path', 'linkpath']) {
      const tar = Buffer.concat([paxEntry([[key, 'evil\0name']]), tarHeader({ name: 'hdr', typeflag: '2', linkname: 't' }), TAR_END]);
      expect(() => indexTar(tar)).toThrow(new RegExp(`layer test: tar entry "hdr" at offset 1024 has a PAX ${key} with a NUL byte \\("evil\\\\u0000name"\\)`));
    }
  });

  it('refuses non-directories whose names end with "/", which GNU tar and bsdtar turn into directories', async () => {
    for (const typeflag of ['0', '7', '2', '1', '6']) {
      const tar = Buffer.concat([fileEntry('target', 'abc'), fileEntry('thing/', '', { typeflag, linkname: 'target' }), TAR_END]);
      expect(() => indexTar(tar), typeflag).toThrow(/tar entry "thing\/" at offset 1024 is a \w+ whose name ends with "\/"/);
    }
    const withData = Buffer.concat([fileEntry('reg/', 'abc'), TAR_END]);
    const into = join(workDir, 'slash');
    await mkdir(into, { recursive: true });
    // GNU tar makes a directory of it, then reads its data as the next header.
    expect(spawnSync('tar', ['-xf', '-', '-C', into], { input: withData }).stderr.toString()).toMatch(/Skipping to next header/);
    const v7Directory = Buffer.concat([fileEntry('dir/', '', { typeflag: '\0' }), TAR_END]);
    expect(indexTar(v7Directory)[0]).toMatchObject({ path: 'dir', type: 'dir' });
  });

  it('reads base-256 ids and sizes, refuses negative ones, and accepts signed header checksums', () => {
    const header = tarHeader({ name: 'big', uid: 3_000_000_000, gid: 7, size: 0 });
    const tar = Buffer.concat([withBase256(header, 124, 12, 5), padBlock(Buffer.from('12345')), TAR_END]);
    const [entry] = indexTar(tar);
    expect(entry).toMatchObject({ path: 'big', uid: 3_000_000_000, gid: 7, size: 5 });
    expect(dataOf(tar, entry!)).toBe('12345');
    expect(peerList('tar', tar, true)[0]).toMatch(/ 3000000000\/7 +5 /);

    const negative = Buffer.from(tarHeader({ name: 'neg' }));
    negative.fill(0xff, 108, 116); // base-256 -1
    expect(() => indexTar(Buffer.concat([rechecksum(negative, 'unsigned'), TAR_END]))).toThrow(/layer test: invalid uid field in the tar header at offset 0/);

    const highBytes = Buffer.from(tarHeader({ name: Buffer.from('caf\xe9-\xff', 'latin1'), size: 0 }));
    const signed = Buffer.concat([rechecksum(highBytes, 'signed'), TAR_END]);
    expect(indexTar(signed)[0]!.path).toBe('caf\xe9-\xff');
    expect(peerFails('tar', signed)).toBe(false);
  });
});

/** `header` with field [offset, offset + length) holding `value` in GNU base-256, checksum redone. */
function withBase256(header: Buffer, offset: number, length: number, value: number): Buffer {
  const copy = Buffer.from(header);
  copy.fill(0, offset, offset + length);
  copy[offset] = 0x80;
  copy.writeUIntBE(value, offset + length - 6, 6);
  return rechecksum(copy, 'unsigned');
}

function rechecksum(header: Buffer, kind: 'signed' | 'unsigned'): Buffer {
  header.fill(0x20, 148, 156);
  const sum = header.reduce((total, byte) => total + (kind === 'signed' && byte > 127 ? byte - 256 : byte), 0);
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return header;
}

describe('normalizeLayerPath', () => {
  it('strips leading slashes and dots, collapses separators and resolves ".." lexically', () => {
    expect(normalizeLayerPath('./a//b/./c/')).toBe('a/b/c');
    expect(normalizeLayerPath('/a/b/../c')).toBe('a/c');
    expect(normalizeLayerPath('./')).toBe('');
    expect(normalizeLayerPath('a/../..')).toBeUndefined();
  });
});
