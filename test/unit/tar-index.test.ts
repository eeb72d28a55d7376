import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, truncate, utimes, writeFile, link, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { type LayerEntry, TarIndexer, normalizeLayerPath } from '../../src/layers/tar-index.ts';
import { padBlock, paxBody, TAR_END, tarBytes, tarHeader } from '../helpers/oci-builder.ts';
import { TOOLS, ensureTools } from '../helpers/system.ts';

const GNU_TAR = { command: 'tar', pkg: 'tar' };

/** Indexes `tar`, fed in chunks of `chunkSize` bytes to cross every boundary. */
function indexTar(tar: Buffer, chunkSize = tar.length): LayerEntry[] {
  const indexer = new TarIndexer('layer test');
  for (let at = 0; at < tar.length; at += chunkSize) indexer.write(tar.subarray(at, at + chunkSize));
  return indexer.end();
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

  it('reads SCHILY and LIBARCHIVE xattrs, negative fractional mtimes and global PAX headers', async () => {
    const perFile = await tarBytes([
      {
        name: 'caps',
        content: 'x',
        pax: {
          'SCHILY.xattr.security.capability': 'cap-bytes',
          'LIBARCHIVE.xattr.user.with%3Dequals': Buffer.from([0, 1, 0xff]).toString('base64'),
          mtime: '-1.5',
        },
      },
    ]);
    const [caps] = indexTar(perFile);
    expect(caps!.xattrs).toEqual({ 'security.capability': Buffer.from('cap-bytes'), 'user.with=equals': Buffer.from([0, 1, 0xff]) });
    expect(caps!.mtime).toBe(-2);

    const globalBody = paxBody({ uid: '4242', 'SCHILY.xattr.user.all': 'yes', path: 'ignored-global-path' });
    const localBody = paxBody({ uid: '7', mtime: '99.0' });
    const tar = Buffer.concat([
      tarHeader({ name: 'pax_global_header', typeflag: 'g', size: globalBody.length }),
      padBlock(globalBody),
      tarHeader({ name: 'first', typeflag: '0' }),
      tarHeader({ name: 'PaxHeader/second', typeflag: 'x', size: localBody.length }),
      padBlock(localBody),
      tarHeader({ name: 'second', typeflag: '0' }),
      TAR_END,
    ]);
    expect(execFileSync('bsdtar', ['-tf', '-'], { input: tar }).toString()).toBe('first\nsecond\n');
    const [first, second] = indexTar(tar, 3);
    expect(first).toMatchObject({ path: 'first', uid: 4242, xattrs: { 'user.all': Buffer.from('yes') } });
    expect(second).toMatchObject({ path: 'second', uid: 7, mtime: 99, xattrs: { 'user.all': Buffer.from('yes') } });
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

  it('rejects GNU sparse files (old GNU and PAX formats), naming the file', async () => {
    const source = join(workDir, 'sparse');
    await mkdir(source, { recursive: true });
    await writeFile(join(source, 'holes'), '');
    await truncate(join(source, 'holes'), 1 << 20);
    await appendFile(join(source, 'holes'), 'end');
    for (const format of ['gnu', 'posix']) {
      const tar = execFileSync('tar', ['-C', source, `--format=${format}`, '--sparse', '-cf', '-', 'holes']);
      expect(() => indexTar(tar)).toThrow(/"holes" is a GNU sparse file/);
    }
  });

  it('rejects unknown entry types', () => {
    const tar = Buffer.concat([tarHeader({ name: 'weird', typeflag: 'Q' }), TAR_END]);
    expect(() => indexTar(tar)).toThrow(/"weird" at offset 0 has unsupported tar type 'Q'/);
  });
});

describe('normalizeLayerPath', () => {
  it('strips leading slashes and dots, collapses separators and resolves ".." lexically', () => {
    expect(normalizeLayerPath('./a//b/./c/')).toBe('a/b/c');
    expect(normalizeLayerPath('/a/b/../c')).toBe('a/c');
    expect(normalizeLayerPath('./')).toBe('');
    expect(normalizeLayerPath('a/../..')).toBeUndefined();
  });
});
