/**
 * Differential test: the flattened tree must equal what `umoci unpack` (an
 * independent implementation of the OCI layer rules) extracts to disk.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import type { Descriptor, ImageConfig, ImageManifest } from '../../src/image/types.ts';
import type { FileRange, TreeEntry } from '../../src/tree/entry.ts';
import { type ImageSpec, type TarEntrySpec, writeOciLayout } from '../helpers/oci-builder.ts';
import { TOOLS, ensureTools } from '../helpers/system.ts';

/** What both sides are compared on, per path. */
interface Observed {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  linkTarget?: string;
  device?: string;
}

const dir = (name: string, extra: Partial<TarEntrySpec> = {}): TarEntrySpec => ({ name, type: 'directory', ...extra });
const file = (name: string, content: string, extra: Partial<TarEntrySpec> = {}): TarEntrySpec => ({ name, content, ...extra });

/** Whiteouts, opaque dirs, cross-layer hard links, symlinks, special bits, odd ids, devices. */
const IMAGE: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        dir('bin'),
        file('bin/busybox', 'busybox binary', { mode: 0o755 }),
        file('bin/sh', 'sh v1', { mode: 0o755 }),
        dir('usr'),
        dir('usr/bin'),
        file('usr/bin/passwd', 'passwd', { mode: 0o4755 }),
        file('usr/bin/wall', 'wall', { mode: 0o2755, gid: 5 }),
        dir('usr/lib'),
        { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
        dir('etc'),
        file('etc/hosts', 'hosts v1'),
        file('etc/old.conf', 'obsolete'),
        file('etc/shadow', 'secret', { mode: 0o640, gid: 42 }),
        dir('opt'),
        file('opt/a', 'a'),
        dir('opt/sub'),
        file('opt/sub/b', 'b'),
        dir('data'),
        file('data/x', 'x'),
        file('data/y', 'y'),
        dir('home'),
        dir('home/user', { uid: 123_456, gid: 200_000, mode: 0o700 }),
        file('home/user/file', 'user file', { uid: 123_456, gid: 200_000, mode: 0o600 }),
        file('home/user/big-ids', 'pax ids', { pax: { uid: '3000000', gid: '4000000' } }),
        dir('hl'),
        file('hl/target', 'target v1', { mode: 0o751, uid: 7 }),
        { name: 'hl/link1', type: 'link', linkname: 'hl/target' },
        dir('dev'),
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        dir('run'),
        { name: 'run/fifo', type: 'fifo', mode: 0o620 },
        dir('tmp', { mode: 0o1777 }),
      ],
    },
    {
      // umoci 0.4 cannot read zstd layers; zstd is covered by the unit tests.
      compression: 'none',
      entries: [
        file('etc/.wh.old.conf', ''),
        file('opt/new', 'new in opaque dir'),
        file('opt/.wh..wh..opq', ''),
        file('.wh.data', ''),
        { name: 'hl/link2', type: 'link', linkname: 'hl/target' },
        file('lib/libfoo.so', 'through the lib symlink'),
        file('etc/hosts', 'hosts v2', { mode: 0o600 }),
        { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
      ],
    },
    {
      compression: 'gzip',
      entries: [
        file('hl/target', 'target v2'),
        dir('home/user/file', { uid: 123_456, mode: 0o711 }),
        file('home/user/file/inner', 'file became a directory'),
        { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
        dir('data', { mode: 0o700 }),
        file('data/z', 'z'),
        dir('usr/lib', { mode: 0o750 }),
      ],
    },
  ],
};

function deviceName(major: number, minor: number): string {
  return `${major}:${minor}`;
}

/** Linux dev_t encoding (glibc gnu_dev_major/minor). */
function deviceOf(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return deviceName(Number(major), Number(minor));
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Walks an extracted rootfs: observations by path plus hard-link groups. */
async function observeDisk(root: string): Promise<{ observed: Map<string, Observed>; linkGroups: string[][] }> {
  const observed = new Map<string, Observed>();
  const byInode = new Map<bigint, string[]>();
  const walk = async (directory: Buffer, prefix: string): Promise<void> => {
    for (const name of await readdir(directory, { encoding: 'buffer' })) {
      const full = Buffer.concat([directory, Buffer.from('/'), name]);
      const path = prefix === '' ? name.toString('latin1') : `${prefix}/${name.toString('latin1')}`;
      const stats = await lstat(full, { bigint: true });
      const common = { mode: Number(stats.mode & 0o7777n), uid: Number(stats.uid), gid: Number(stats.gid) };
      if (stats.isDirectory()) {
        observed.set(path, { type: 'dir', ...common });
        await walk(full, path);
        continue;
      }
      if (stats.nlink > 1n) byInode.set(stats.ino, [...(byInode.get(stats.ino) ?? []), path]);
      if (stats.isFile()) {
        const content = await readFile(full);
        observed.set(path, { type: 'file', ...common, size: content.length, sha256: sha256(content) });
      } else if (stats.isSymbolicLink()) {
        observed.set(path, { type: 'symlink', ...common, linkTarget: (await readlink(full, { encoding: 'buffer' })).toString('latin1') });
      } else if (stats.isCharacterDevice() || stats.isBlockDevice()) {
        observed.set(path, { type: stats.isCharacterDevice() ? 'char' : 'block', ...common, device: deviceOf(stats.rdev) });
      } else if (stats.isFIFO()) {
        observed.set(path, { type: 'fifo', ...common });
      } else {
        throw new Error(`unexpected file type at ${path}`);
      }
    }
  };
  await walk(Buffer.from(root), '');
  return { observed, linkGroups: sortedGroups(byInode.values()) };
}

function readRange(range: FileRange): Buffer {
  const buffer = Buffer.alloc(range.size);
  const fd = openSync(range.file, 'r');
  try {
    readSync(fd, buffer, 0, range.size, range.offset);
  } finally {
    closeSync(fd);
  }
  return buffer;
}

/** The same observations made on flattened tree entries. */
function observeTree(entries: TreeEntry[]): { observed: Map<string, Observed>; linkGroups: string[][] } {
  const observed = new Map<string, Observed>();
  const byInode = new Map<number, string[]>();
  for (const entry of entries) {
    const common = { type: entry.type, mode: entry.mode, uid: entry.uid, gid: entry.gid };
    if (entry.inode !== undefined) byInode.set(entry.inode, [...(byInode.get(entry.inode) ?? []), entry.path]);
    if (entry.type === 'file') {
      const content = readRange(entry.data as FileRange);
      observed.set(entry.path, { ...common, size: content.length, sha256: sha256(content) });
    } else if (entry.type === 'symlink') {
      observed.set(entry.path, { ...common, linkTarget: entry.linkTarget! });
    } else if (entry.type === 'char' || entry.type === 'block') {
      observed.set(entry.path, { ...common, device: deviceName(entry.devMajor!, entry.devMinor!) });
    } else {
      observed.set(entry.path, common);
    }
  }
  return { observed, linkGroups: sortedGroups([...byInode.values()].filter((group) => group.length > 1)) };
}

function sortedGroups(groups: Iterable<string[]>): string[][] {
  return [...groups].map((group) => [...group].sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
}

async function readBlob(layout: string, descriptor: Descriptor): Promise<Buffer> {
  return readFile(join(layout, 'blobs', 'sha256', descriptor.digest.slice('sha256:'.length)));
}

describe('flattenLayers against umoci unpack', () => {
  let workDir: string;

  beforeAll(async () => {
    ensureTools(TOOLS.umoci);
    if (process.getuid?.() !== 0) throw new Error('this test runs umoci unpack as root (devices, owners); run it as root');
    workDir = await mkdtemp(join(tmpdir(), 'rampack-flatten-umoci-'));
  });

  afterAll(async () => {
    await rm(workDir, { recursive: true, force: true });
  });

  it('produces the same tree as umoci', async () => {
    const layout = join(workDir, 'layout');
    const bundle = join(workDir, 'bundle');
    const manifestDescriptor = await writeOciLayout(layout, IMAGE, 'test');
    execFileSync('umoci', ['unpack', '--image', `${layout}:test`, bundle], { stdio: 'pipe' });

    const manifest = JSON.parse((await readBlob(layout, manifestDescriptor as Descriptor)).toString()) as ImageManifest;
    const config = JSON.parse((await readBlob(layout, manifest.config)).toString()) as ImageConfig;
    const layers: UnpackedLayer[] = [];
    for (const [index, descriptor] of manifest.layers.entries()) {
      const blobPath = join(layout, 'blobs', 'sha256', descriptor.digest.slice('sha256:'.length));
      layers.push(await unpackLayer({ blobPath, descriptor, diffId: config.rootfs.diff_ids[index]!, cacheDir: join(workDir, 'cache') }));
    }
    const flattened = flattenLayers(layers);

    const disk = await observeDisk(join(bundle, 'rootfs'));
    const tree = observeTree(flattened.entries);
    expect(Object.fromEntries(tree.observed)).toEqual(Object.fromEntries(disk.observed));
    expect(tree.linkGroups).toEqual(disk.linkGroups);
    // The scenario really exercises what it claims to.
    expect(disk.linkGroups).toEqual([['hl/link1', 'hl/link2']]);
    expect(disk.observed.get('usr/lib/libfoo.so')?.type).toBe('file');
    expect(disk.observed.has('etc/old.conf') || disk.observed.has('opt/a') || disk.observed.has('data/x')).toBe(false);
  });
});
