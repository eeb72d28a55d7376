import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { InputError, VerificationError } from '../../src/errors.ts';
import { flattenLayers, type FlattenResult } from '../../src/layers/flatten.ts';
import type { LayerEntry } from '../../src/tar/tar-index.ts';
import { unpackLayer, type UnpackedLayer, type UnpackLayerOptions } from '../../src/layers/unpack.ts';
import { compareTreePaths, parentPath, type FileRange, type TreeEntry } from '../../src/tree/entry.ts';
import { sha256Digest } from '../../src/util/digest.ts';
import { tarBytes, type TarEntrySpec } from '../helpers/oci-builder.ts';

let workDir: string;
let cacheDir: string;
let blobCount = 0;

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'rampack-flatten-'));
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

beforeEach(async () => {
  cacheDir = await mkdtemp(join(workDir, 'cache-'));
});

type Encoder = (tar: Buffer) => Buffer;

/** Writes `entries` as a layer blob; returns what unpackLayer needs. */
async function layerBlob(entries: TarEntrySpec[], encode: Encoder = gzipSync): Promise<UnpackLayerOptions & { blob: string }> {
  const tar = await tarBytes(entries);
  const blob = encode(tar);
  const blobPath = join(workDir, `blob-${blobCount++}`);
  await writeFile(blobPath, blob);
  const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256Digest(blob), size: blob.length };
  return { blob: blobPath, descriptor, diffId: sha256Digest(tar), cache: new Cache(cacheDir) };
}

async function layer(entries: TarEntrySpec[], encode?: Encoder): Promise<UnpackedLayer> {
  return unpackLayer(await layerBlob(entries, encode));
}

async function flatten(...layers: TarEntrySpec[][]): Promise<FlattenResult> {
  const unpacked: UnpackedLayer[] = [];
  for (const entries of layers) unpacked.push(await layer(entries));
  return flattenLayers(unpacked);
}

function readRange(range: FileRange): string {
  const buffer = Buffer.alloc(range.size);
  const fd = openSync(range.file, 'r');
  try {
    readSync(fd, buffer, 0, range.size, range.offset);
  } finally {
    closeSync(fd);
  }
  return buffer.toString('latin1');
}

function contentOf(entry: TreeEntry | undefined): string {
  return readRange(entry!.data as FileRange);
}

function byPath(result: FlattenResult): Map<string, TreeEntry> {
  return new Map(result.entries.map((entry) => [entry.path, entry]));
}

function paths(result: FlattenResult): string[] {
  return result.entries.map((entry) => entry.path);
}

const dir = (name: string, mode = 0o755): TarEntrySpec => ({ name, type: 'directory', mode });
const file = (name: string, content: string, extra: Partial<TarEntrySpec> = {}): TarEntrySpec => ({ name, content, ...extra });
const hardlink = (name: string, target: string): TarEntrySpec => ({ name, type: 'link', linkname: target });
const symlink = (name: string, target: string): TarEntrySpec => ({ name, type: 'symlink', linkname: target });
const whiteout = (name: string): TarEntrySpec => ({ name, content: '' });

describe('flattenLayers: whiteouts', () => {
  it('a file whiteout deletes the file from lower layers and never appears itself', async () => {
    const result = await flatten([dir('etc'), file('etc/a', 'a'), file('etc/b', 'b')], [whiteout('etc/.wh.a')]);
    expect(paths(result)).toEqual(['etc', 'etc/b']);
  });

  it('a directory whiteout deletes the whole subtree', async () => {
    const result = await flatten(
      [dir('opt'), dir('opt/x'), dir('opt/x/y'), file('opt/x/y/z', 'z'), file('opt/keep', 'k')],
      [whiteout('opt/.wh.x')],
    );
    expect(paths(result)).toEqual(['opt', 'opt/keep']);
  });

  it('an opaque whiteout clears lower children but keeps the same layer children, wherever the marker is', async () => {
    const result = await flatten(
      [dir('d'), file('d/old', 'old'), dir('d/sub'), file('d/sub/f', 'f'), file('other', 'o')],
      [file('d/new', 'new'), dir('d/newdir'), whiteout('d/.wh..wh..opq'), dir('d', 0o700)],
    );
    expect(paths(result)).toEqual(['d', 'd/new', 'd/newdir', 'other']);
    expect(byPath(result).get('d')!.mode).toBe(0o700);
  });

  it('whiteouts act on lower layers only: a same-layer entry with the whited-out name stays', async () => {
    const result = await flatten([file('f', 'lower'), dir('x'), file('x/old', 'o')], [file('f', 'upper'), whiteout('.wh.f'), whiteout('.wh.x'), file('x/new', 'n')]);
    const entries = byPath(result);
    expect(contentOf(entries.get('f'))).toBe('upper');
    expect(paths(result)).toEqual(['f', 'x', 'x/new']);
  });

  it('re-adds a path deleted by a lower layer', async () => {
    const result = await flatten([dir('x'), file('x/a', 'a')], [whiteout('.wh.x')], [dir('x', 0o750), file('x/b', 'b')]);
    expect(paths(result)).toEqual(['x', 'x/b']);
    expect(byPath(result).get('x')!.mode).toBe(0o750);
  });

  it('skips aufs metadata and ignores whiteouts of missing paths', async () => {
    const result = await flatten([file('a', 'a')], [whiteout('.wh..wh.aufs'), dir('.wh..wh.plnk'), file('.wh..wh.plnk/1.2', 'x'), whiteout('.wh.missing'), whiteout('nodir/.wh.x')]);
    expect(paths(result)).toEqual(['a']);
    expect(result.warnings.join('\n')).toMatch(/skipped 3 aufs metadata entries/);
  });
});

describe('flattenLayers: replacement and type changes', () => {
  it('directory over directory replaces metadata and keeps children', async () => {
    const result = await flatten([{ ...dir('d', 0o700), uid: 1, mtime: 1 }, file('d/f', 'f')], [{ ...dir('d', 0o755), uid: 2, mtime: 2 }]);
    expect(byPath(result).get('d')).toMatchObject({ type: 'dir', mode: 0o755, uid: 2, mtime: 2 });
    expect(paths(result)).toEqual(['d', 'd/f']);
  });

  it('changes types by replacement; a replaced directory loses its subtree', async () => {
    const result = await flatten(
      [file('a', 'was a file'), dir('b'), file('b/c', 'c'), symlink('s', 'target'), dir('t'), file('t/u', 'u')],
      [dir('a'), file('a/child', 'child'), symlink('b', '/elsewhere'), file('s', 'now a file'), { name: 't', type: 'fifo' }],
    );
    const entries = byPath(result);
    expect(paths(result)).toEqual(['a', 'a/child', 'b', 's', 't']);
    expect(entries.get('a')!.type).toBe('dir');
    expect(entries.get('b')).toMatchObject({ type: 'symlink', linkTarget: '/elsewhere', mode: 0o777 });
    expect(contentOf(entries.get('s'))).toBe('now a file');
    expect(entries.get('t')!.type).toBe('fifo');
  });

  it('keeps setuid/setgid/sticky bits, numeric ids, floored mtimes, devices and xattrs', async () => {
    const result = await flatten([
      // tar-stream's ustar id fields stop at 0o777777, so larger ids travel in PAX records.
      file('su', 'x', { mode: 0o4755, pax: { uid: '1234567', gid: '7654321' } }),
      { ...dir('tmp', 0o1777) },
      file('caps', 'c', { pax: { 'SCHILY.xattr.security.capability': 'cap', mtime: '1700000000.9' } }),
      { name: 'null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    ]);
    const entries = byPath(result);
    expect(entries.get('su')).toMatchObject({ mode: 0o4755, uid: 1234567, gid: 7654321 });
    expect(entries.get('tmp')!.mode).toBe(0o1777);
    expect(entries.get('caps')).toMatchObject({ mtime: 1_700_000_000, xattrs: { 'security.capability': Buffer.from('cap') } });
    expect(result.droppedXattrs).toEqual([{ path: 'caps', name: 'security.capability', value: Buffer.from('cap') }]);
    expect(entries.get('null')).toMatchObject({ type: 'char', devMajor: 1, devMinor: 3, mode: 0o666 });
  });
});

describe('flattenLayers: hard links', () => {
  it('links within a layer share the inode key, data and metadata of the target', async () => {
    const result = await flatten([file('f', 'data', { mode: 0o4750, uid: 5, gid: 6 }), hardlink('g', 'f')]);
    const entries = byPath(result);
    const [f, g] = [entries.get('f')!, entries.get('g')!];
    expect(g).toMatchObject({ type: 'file', mode: 0o4750, uid: 5, gid: 6, inode: f.inode, data: f.data });
    expect(f.inode).toBeTypeOf('number');
  });

  it('links across layers; overwriting or deleting the target leaves the other links with the old inode', async () => {
    const lower = [file('f', 'old'), hardlink('g', 'f'), file('other', 'o')];
    const overwritten = byPath(await flatten(lower, [hardlink('h', 'f')], [file('f', 'new')]));
    const [f, g, h] = ['f', 'g', 'h'].map((path) => overwritten.get(path)!);
    expect(contentOf(f)).toBe('new');
    expect([contentOf(g), contentOf(h)]).toEqual(['old', 'old']);
    expect(h!.inode).toBe(g!.inode);
    expect(f!.inode).not.toBe(g!.inode);
    expect(overwritten.get('other')!.inode).not.toBe(g!.inode);

    const deleted = byPath(await flatten(lower, [hardlink('h', 'f')], [whiteout('.wh.f')]));
    expect(deleted.has('f')).toBe(false);
    expect(deleted.get('h')!.inode).toBe(deleted.get('g')!.inode);
    expect(contentOf(deleted.get('h'))).toBe('old');
  });

  it('links to symlinks and fifos copy the target type under one inode key', async () => {
    const entries = byPath(await flatten([symlink('s', 'somewhere'), { name: 'p', type: 'fifo' }], [hardlink('s2', 's'), hardlink('p2', 'p')]));
    expect(entries.get('s2')).toMatchObject({ type: 'symlink', linkTarget: 'somewhere', inode: entries.get('s')!.inode });
    expect(entries.get('p2')).toMatchObject({ type: 'fifo', inode: entries.get('p')!.inode });
    expect(entries.get('s')!.inode).not.toBe(entries.get('p')!.inode);
  });

  it('a link to a missing path is an InputError naming the layer and both paths', async () => {
    const upper = await layer([hardlink('link', 'gone')]);
    expect(() => flattenLayers([upper])).toThrow(InputError);
    expect(() => flattenLayers([upper])).toThrow(`layer ${upper.diffId}: hard link "link" points to "gone", which does not exist`);
    // A link to an entry later in the same tar is a link to nothing yet, as GNU tar and bsdtar find it.
    const early = await layer([hardlink('b', 'c'), file('c', 'C')]);
    expect(() => flattenLayers([early])).toThrow(/hard link "b" points to "c", which does not exist at that point/);
  });

  it('a link to itself leaves the entry as it was (GNU tar keeps it, bsdtar skips the link)', async () => {
    const entries = byPath(await flatten([file('a', 'AA', { mode: 0o600 })], [hardlink('a', 'a')]));
    expect(entries.get('a')).toMatchObject({ type: 'file', mode: 0o600 });
    expect(contentOf(entries.get('a'))).toBe('AA');
    expect(() => flattenLayers([{ diffId: 'self', tarPath: '', entries: [{ path: 's', type: 'hardlink', linkname: 's', mode: 0, uid: 0, gid: 0, mtime: 0, size: 0, dataOffset: 0 }], warnings: [] }])).toThrow(
      /hard link "s" points to "s", which does not exist/,
    );
  });
});

describe('flattenLayers: parents', () => {
  it('creates missing parents as root-owned 0755 directories with the entry mtime', async () => {
    const result = await flatten([file('a/b/c', 'c', { mtime: 1_234 })]);
    expect(result.entries).toMatchObject([
      { path: 'a', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1_234 },
      { path: 'a/b', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1_234 },
      { path: 'a/b/c', type: 'file' },
    ]);
  });

  it('places entries below symlinked parents at the symlink target, confined to the root', async () => {
    const result = await flatten(
      [dir('usr'), dir('usr/lib'), symlink('lib', 'usr/lib'), symlink('abs', '/usr'), symlink('up', '../../..'), symlink('chain', 'abs/lib')],
      [file('lib/libc.so', 'libc'), file('abs/bin/sh', 'sh'), file('up/etc/passwd', 'root'), file('chain/deep/x', 'x'), hardlink('usr/libc-link', 'lib/libc.so')],
    );
    const entries = byPath(result);
    expect(paths(result)).toEqual(['abs', 'chain', 'etc', 'etc/passwd', 'lib', 'up', 'usr', 'usr/bin', 'usr/bin/sh', 'usr/lib', 'usr/lib/deep', 'usr/lib/deep/x', 'usr/lib/libc.so', 'usr/libc-link']);
    expect(entries.get('lib')!.type).toBe('symlink');
    expect(entries.get('usr/libc-link')!.inode).toBe(entries.get('usr/lib/libc.so')!.inode);
    expect(result.warnings.join('\n')).toMatch(/4 entries have a symlink among their parent directories .*"lib\/libc.so" -> "usr\/lib\/libc.so"/);
  });

  it('rejects symlink loops and parents that are not directories', async () => {
    const loop = [await layer([symlink('a', 'b'), symlink('b', 'a')]), await layer([file('a/x', 'x')])];
    expect(() => flattenLayers(loop)).toThrow(/too many levels of symbolic links in the parents of "a\/x"/);
    const fileParent = [await layer([file('f', 'f')]), await layer([file('f/x', 'x')])];
    expect(() => flattenLayers(fileParent)).toThrow(
      `layer ${fileParent[1]!.diffId}: cannot create "f/x": its parent "f" is a file, not a directory`,
    );
  });

  it('flattens trees 20000 levels deep without recursion, explicit or implied parents alike', () => {
    const depth = 20_000;
    const explicit: LayerEntry[] = [];
    let path = '';
    for (let level = 0; level < depth; level++) {
      path = path === '' ? 'd' : `${path}/d`;
      explicit.push({ path, type: 'dir', mode: 0o700, uid: 0, gid: 0, mtime: 5, size: 0, dataOffset: 0 });
    }
    const implied: LayerEntry = { path: `${path}/f`, type: 'fifo', mode: 0o644, uid: 0, gid: 0, mtime: 7, size: 0, dataOffset: 0 };
    for (const entries of [[...explicit, implied], [implied]]) {
      const result = flattenLayers([{ diffId: 'deep', tarPath: '', entries, warnings: [] }]);
      expect(result.entries.length).toBe(depth + 1);
      expect(result.entries.at(-1)).toMatchObject({ path: `${path}/f`, type: 'fifo' });
      expect(result.entries[depth - 1]).toMatchObject({ path, mode: entries.length > 1 ? 0o700 : 0o755 });
    }
  });

  it('refuses to follow a parent symlink whose target is longer than PATH_MAX (Linux cannot create one)', async () => {
    const target = Array(300_000).fill('x').join('/');
    const layers = [await layer([symlink('long', target)]), await layer([file('long/f', 'f')])];
    expect(() => flattenLayers(layers)).toThrow(/a parent of "long\/f" is a symlink whose target is longer than PATH_MAX/);
  });

  it('sorts in walk order (a directory, its subtree, then its next sibling), every parent before its children', async () => {
    const result = await flatten([file('a-b', '1'), file('a/b', '2'), file('a.b', '3'), file('Z/\xe9', '4'), file('a/b0/c', '5')]);
    const sorted = paths(result);
    expect(sorted).toEqual([...sorted].sort(compareTreePaths));
    for (const [index, path] of sorted.entries()) {
      const parent = parentPath(path);
      if (parent !== '') expect(sorted.indexOf(parent)).toBeLessThan(index);
    }
    expect(sorted).toEqual(['Z', 'Z/\xc3\xa9', 'a', 'a/b', 'a/b0', 'a/b0/c', 'a-b', 'a.b']);
  });
});

describe('unpackLayer', () => {
  const entries = [dir('etc'), file('etc/hostname', 'box\n'), file('bin/big', 'x'.repeat(300_000))];

  async function layerFiles(): Promise<string[]> {
    return readdir(join(cacheDir, 'layers', 'sha256')).catch(() => []);
  }

  it('decodes gzip (multi-member), zstd (multi-frame) and uncompressed layers alike', async () => {
    const twoMembers: Encoder = (tar) => Buffer.concat([gzipSync(tar.subarray(0, 1000)), gzipSync(tar.subarray(1000))]);
    const twoFrames: Encoder = (tar) => Buffer.concat([zstdCompressSync(tar.subarray(0, 70_000)), zstdCompressSync(tar.subarray(70_000))]);
    const results = [];
    for (const encode of [gzipSync, twoMembers, zstdCompressSync, twoFrames, (tar: Buffer) => tar]) {
      cacheDir = await mkdtemp(join(workDir, 'cache-'));
      const unpacked = await layer(entries, encode);
      const result = flattenLayers([unpacked]);
      expect(contentOf(byPath(result).get('bin/big'))).toBe('x'.repeat(300_000));
      results.push(result.entries.map(({ data, ...rest }) => rest));
    }
    for (const result of results) expect(result).toEqual(results[0]);
  });

  it('caches zero-filled data as holes, reading back the same bytes', async () => {
    const zeros = '\0'.repeat(8 << 20);
    const unpacked = await layer([file('zeros', zeros), file('after', 'data after the hole')]);
    const cached = await stat(unpacked.tarPath);
    expect(cached.blocks * 512).toBeLessThan(1 << 20);
    const tree = byPath(flattenLayers([unpacked]));
    expect(contentOf(tree.get('zeros'))).toBe(zeros);
    expect(contentOf(tree.get('after'))).toBe('data after the hole');
    expect(sha256Digest(await readFile(unpacked.tarPath))).toBe(unpacked.diffId);
  });

  it('reuses the cache without reading the blob', async () => {
    const options = await layerBlob(entries);
    const first = await unpackLayer(options);
    expect((await layerFiles()).sort()).toEqual([`${options.diffId.slice(7)}.json`, `${options.diffId.slice(7)}.tar`]);
    await rm(options.blob);
    const second = await unpackLayer(options);
    expect(second).toEqual(first);
  });

  it('rejects a blob that does not match its digest or diff_id and leaves nothing in the cache', async () => {
    const options = await layerBlob(entries);
    const wrongDigest = { ...options, descriptor: { ...options.descriptor, digest: sha256Digest('other') } };
    await expect(unpackLayer(wrongDigest)).rejects.toThrow(VerificationError);
    await expect(unpackLayer(wrongDigest)).rejects.toThrow(`layer ${sha256Digest('other')}: the blob has digest ${options.descriptor.digest}`);
    const wrongSize = { ...options, descriptor: { ...options.descriptor, size: 3 } };
    await expect(unpackLayer(wrongSize)).rejects.toThrow(VerificationError);
    const wrongDiffId = { ...options, diffId: sha256Digest('other') };
    await expect(unpackLayer(wrongDiffId)).rejects.toThrow(VerificationError);
    await expect(unpackLayer(wrongDiffId)).rejects.toThrow(/but the image config lists diff_id/);
    expect(await layerFiles()).toEqual([]);
  });

  it('reports a corrupt or truncated compressed stream as an InputError naming the layer', async () => {
    for (const damage of [(blob: Buffer) => blob.subarray(0, blob.length - 20), (blob: Buffer) => Buffer.concat([blob.subarray(0, 30), Buffer.alloc(40, 7), blob.subarray(70)])]) {
      for (const compress of [gzipSync, zstdCompressSync]) {
        const options = await layerBlob(entries, (tar) => damage(compress(tar)));
        const error = await unpackLayer(options).catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(InputError);
        expect((error as Error).message).toMatch(new RegExp(`^layer ${options.descriptor.digest} is corrupt`));
      }
    }
    expect(await layerFiles()).toEqual([]);
  });

  it('rejects entries that escape the root while unpacking', async () => {
    const options = await layerBlob([file('../escape', 'x')]);
    await expect(unpackLayer(options)).rejects.toThrow(`layer ${options.descriptor.digest}: tar entry "../escape" at offset 0 points outside the root`);
  });
});
