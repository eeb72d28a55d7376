/**
 * Differential test: for layered images that cover every tar corner case of
 * issue 4, the tree rampack's archive holds (written by unpackLayer +
 * flattenLayers + newcArchive, extracted by GNU cpio) must equal the tree
 * `umoci unpack` (an independent implementation of the OCI layer rules)
 * extracts. One image is also built with the CLI and booted on Debian's
 * kernel, so the kernel's own unpacker is the judge.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import { bootInitramfs } from '../../src/boot/qemu.ts';
import { readNewcArchive } from '../../src/cpio/reader.ts';
import { newcArchive } from '../../src/cpio/writer.ts';
import type { Descriptor, ImageConfig, ImageManifest } from '../../src/oci/types.ts';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import { buildTestAgent, parseTree, type AgentTreeEntry } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { type ImageSpec, rawTar, type TarEntrySpec, writeOciLayout } from '../helpers/oci-builder.ts';
import { SPARSE_FILES, SPARSE_FORMATS, sparseContents, sparseTar } from '../helpers/sparse.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

/** What both sides are compared on, per path. */
interface Observed {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  linkTarget?: string;
  device?: string;
}

interface ObservedTree {
  /** By byte-string path, relative to the root. */
  observed: Map<string, Observed>;
  /** Paths sharing an inode, each group and the list sorted. */
  linkGroups: string[][];
}

const dir = (name: string, extra: Partial<TarEntrySpec> = {}): TarEntrySpec => ({ name, type: 'directory', ...extra });
const file = (name: string, content: string, extra: Partial<TarEntrySpec> = {}): TarEntrySpec => ({ name, content, ...extra });
const symlink = (name: string, linkname: string): TarEntrySpec => ({ name, type: 'symlink', linkname });
const hardlink = (name: string, linkname: string): TarEntrySpec => ({ name, type: 'link', linkname });
const whiteout = (name: string): TarEntrySpec => ({ name, content: '' });
const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1');

/** Whiteouts of files, subtrees and directories' lower contents; re-adding; every kind of type change. */
const WHITEOUTS: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        dir('etc'), file('etc/keep', 'k'), file('etc/gone', 'g'),
        dir('tree'), file('tree/a', 'a'), dir('tree/sub'), file('tree/sub/b', 'b'),
        dir('opq', { mode: 0o750 }), file('opq/lower', 'l'), dir('opq/lowerdir'), file('opq/lowerdir/x', 'x'),
        dir('readd'), file('readd/f', 'v1'),
        file('file2dir', 'f'),
        dir('dir2link'), file('dir2link/child', 'c'),
        symlink('link2file', 'etc'),
        file('file2fifo', 'x'),
        dir('dir2file'), file('dir2file/c', 'c'),
        dir('meta', { mode: 0o755, uid: 1 }), file('meta/kept', 'kept'),
        symlink('link2dir', 'etc'),
      ],
    },
    {
      compression: 'none',
      entries: [
        whiteout('./etc/.wh.gone'),
        whiteout('/.wh.tree'),
        file('opq/new-before', 'nb'),
        whiteout('opq/.wh..wh..opq'),
        file('opq/new-after', 'na'),
        dir('opq/newdir'),
        whiteout('readd/.wh.f'),
        dir('file2dir/', { mode: 0o711 }), file('file2dir/inside', 'i'),
        symlink('dir2link', 'etc'),
        file('link2file', 'now a file'),
        { name: 'file2fifo', type: 'fifo', mode: 0o600 },
        file('dir2file', 'now a file'),
        whiteout('.wh.never-existed'),
        dir('meta', { mode: 0o700, uid: 2 }),
        dir('link2dir'), file('link2dir/own', 'o'),
      ],
    },
    {
      compression: 'gzip',
      entries: [file('readd/f', 'v2'), dir('tree'), file('tree/new', 'new')],
    },
  ],
};

/** Hard links within and across layers, chains, and links whose target is later overwritten or deleted. */
const HARD_LINKS: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        dir('bin'), file('bin/tool', 'tool', { mode: 0o755, uid: 7 }), hardlink('bin/tool-a', 'bin/tool'),
        file('bin/over', 'over v1'), file('bin/del', 'del'),
        dir('run'), { name: 'run/fifo', type: 'fifo', mode: 0o640 }, hardlink('run/fifo-link', 'run/fifo'),
        file('empty', ''), hardlink('empty-link', 'empty'),
      ],
    },
    {
      compression: 'none',
      entries: [
        hardlink('bin/tool-b', 'bin/tool'),
        hardlink('bin/tool-c', 'bin/tool-a'),
        hardlink('./bin/tool-d', '/bin/tool'),
        hardlink('bin/over-link', 'bin/over'),
        hardlink('bin/del-link', 'bin/del'),
      ],
    },
    {
      compression: 'gzip',
      entries: [file('bin/over', 'over v2'), whiteout('bin/.wh.del')],
    },
  ],
};

const LONG_DIR = `long-${'d'.repeat(120)}`;
const LONG_TARGET = `/${'t'.repeat(150)}`;

/** Implicit parents, odd spellings, long and odd names, symlinks among parents and as link targets. */
const PATHS: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        file('deep/er/still/file', 'implicit parents'),
        file('./dot/file', 'dot'),
        file('dot//double//file', 'double slash'),
        dir('trail/'),
        file('up/../updir/file', 'dot-dot inside the root'),
        dir(LONG_DIR),
        file(`${LONG_DIR}/${'f'.repeat(110)}`, 'pax long name'),
        file('utf8/héllo-ñ-日本-😀', 'utf-8 name'),
        dir('real'),
        symlink('abs', '/etc/passwd'),
        symlink('climb', '../../../../etc'),
        symlink('via-rel', 'real'),
        symlink('via-abs', '/real'),
        symlink('via-climb', '../../real'),
        symlink('via-chain', 'via-rel'),
        file('via-rel/f1', 'through a relative symlink'),
        file('via-abs/f2', 'through an absolute symlink'),
        file('via-climb/f3', 'through a symlink climbing out of the root'),
        file('via-chain/sub/f4', 'through two symlinks, with an implicit parent'),
      ],
    },
    {
      compression: 'none',
      tar: rawTar([
        { name: 'gnu', typeflag: '5', mode: 0o755 },
        { name: `gnu/${'g'.repeat(130)}`, data: latin1('gnu long name'), longNames: 'gnu' },
        { name: 'gnu/long-symlink', typeflag: '2', linkname: LONG_TARGET, longNames: 'gnu' },
        { name: `gnu/hard-${'h'.repeat(120)}`, typeflag: '1', linkname: `gnu/${'g'.repeat(130)}`, longNames: 'gnu' },
        { name: 'pax-long-symlink', typeflag: '2', linkname: `${LONG_TARGET}/pax`, longNames: 'pax' },
        { name: 'odd', typeflag: '5', mode: 0o755 },
        { name: latin1('odd/tab\there\xff\xfe\x01'), data: latin1('odd bytes') },
        { name: 'odd/odd-target', typeflag: '2', linkname: latin1('tab\there\xff\xfe\x01') },
        { name: 'implicit/by/raw', data: latin1('raw implicit parents') },
      ]),
    },
  ],
};

/** A security.capability value: v2, effective, cap_net_raw permitted. */
const NET_RAW_CAPABILITY = Buffer.from([0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** Special mode bits, ids beyond ustar and 2^21, devices, fifos, empty files, PAX mtimes, xattrs. */
const METADATA: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        dir('bin'),
        file('bin/suid', 'suid', { mode: 0o4755 }),
        file('bin/sgid', 'sgid', { mode: 0o2711, gid: 5 }),
        file('bin/ping', 'ping', { mode: 0o755, pax: { 'SCHILY.xattr.security.capability': NET_RAW_CAPABILITY.toString('latin1') } }),
        dir('shared', { mode: 0o2775, gid: 100 }),
        dir('tmp', { mode: 0o1777 }),
        dir('home'),
        file('home/big-ids', 'pax ids', { uid: 3_000_000, gid: 2_097_153 }),
        file('home/ustar-ids', 'ids just below the PAX limit', { uid: 262_143, gid: 262_143 }),
        file('home/empty', ''),
        file('home/pax-mtime', 'fractional mtime', { pax: { mtime: '1700000000.987654321' } }),
        dir('dev'),
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'dev/sda1', type: 'block-device', devmajor: 8, devminor: 1, mode: 0o660, gid: 6 },
        { name: 'dev/fifo', type: 'fifo', mode: 0o620, uid: 1000 },
      ],
    },
    {
      compression: 'none',
      tar: rawTar([
        { name: 'dev/big', typeflag: '3', devmajor: 4095, devminor: 1_048_575, mode: 0o600 },
        { name: 'dev/nvme', typeflag: '4', devmajor: 259, devminor: 300_000, mode: 0o640 },
        { name: 'home/base256-ids', data: latin1('base-256 ids'), uid: 5_000_000, gid: 9_999_999 },
      ]),
    },
  ],
};

/** The mixed image of the first version of this test: lib symlink, opaque dirs, cross-layer links, ids. */
const MIXED: ImageSpec = {
  layers: [
    {
      compression: 'gzip',
      entries: [
        dir('bin'), file('bin/busybox', 'busybox binary', { mode: 0o755 }), file('bin/sh', 'sh v1', { mode: 0o755 }),
        dir('usr'), dir('usr/bin'), dir('usr/lib'), symlink('lib', 'usr/lib'),
        dir('home'), dir('home/user', { uid: 123_456, gid: 200_000, mode: 0o700 }),
        file('home/user/file', 'user file', { uid: 123_456, gid: 200_000, mode: 0o600 }),
        dir('data'), file('data/x', 'x'),
      ],
    },
    {
      compression: 'none',
      entries: [file('lib/libfoo.so', 'through the lib symlink'), whiteout('.wh.data')],
    },
    {
      compression: 'gzip',
      entries: [
        dir('home/user/file', { uid: 123_456, mode: 0o711 }),
        file('home/user/file/inner', 'file became a directory'),
        symlink('bin/sh', 'busybox'),
        dir('data', { mode: 0o700 }), file('data/z', 'z'),
        dir('usr/lib', { mode: 0o750 }),
      ],
    },
  ],
};

/**
 * Sparse files in the PAX formats GNU tar and bsdtar write, one layer each
 * (made when first used: the tools write them). Old GNU sparse entries
 * (typeflag 'S') umoci refuses, as containerd and Docker do; the build test
 * in sparse-build.test.ts checks them against GNU tar.
 */
const PAX_SPARSE_FORMATS = Object.keys(SPARSE_FORMATS).filter((format) => format !== 'gnu-old');
let sparseImage: ImageSpec | undefined;
function sparseFiles(): ImageSpec {
  const source = mkdtempSync(join(tmpdir(), 'rampack-sparse-layers-'));
  try {
    sparseImage ??= { layers: PAX_SPARSE_FORMATS.map((format) => ({ compression: 'gzip' as const, tar: sparseTar(source, format) })) };
  } finally {
    rmSync(source, { recursive: true, force: true });
  }
  return sparseImage;
}

const IMAGES: Record<string, ImageSpec> = {
  whiteouts: WHITEOUTS,
  'hard-links': HARD_LINKS,
  paths: PATHS,
  metadata: METADATA,
  mixed: MIXED,
  get sparse() {
    return sparseFiles();
  },
};

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Linux dev_t encoding (glibc gnu_dev_major/minor). */
function deviceOf(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** Walks an extracted rootfs: observations by path plus hard-link groups. */
async function observeDisk(root: string): Promise<ObservedTree> {
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

function sortedGroups(groups: Iterable<string[]>): string[][] {
  return [...groups].map((group) => [...group].sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
}

/** The same observations made on the agent's listing of the guest's root. */
function observeAgentTree(entries: AgentTreeEntry[]): ObservedTree {
  const types = { f: 'file', d: 'dir', l: 'symlink', c: 'char', b: 'block', p: 'fifo' } as const;
  const observed = new Map<string, Observed>();
  const byInode = new Map<number, string[]>();
  for (const entry of entries) {
    if (entry.path === '/') continue;
    const path = entry.path.slice(1);
    if (entry.type === 's') throw new Error(`unexpected socket at ${path}`);
    const type = types[entry.type];
    const common = { type, mode: entry.mode, uid: entry.uid, gid: entry.gid };
    if (type !== 'dir' && entry.nlink > 1) byInode.set(entry.inode, [...(byInode.get(entry.inode) ?? []), path]);
    if (type === 'file') observed.set(path, { ...common, size: entry.size, sha256: entry.detail });
    else if (type === 'symlink') observed.set(path, { ...common, linkTarget: entry.detail });
    else if (type === 'char' || type === 'block') observed.set(path, { ...common, device: entry.detail });
    else observed.set(path, common);
  }
  return { observed, linkGroups: sortedGroups(byInode.values()) };
}

async function readBlob(layout: string, descriptor: Descriptor): Promise<Buffer> {
  return readFile(join(layout, 'blobs', 'sha256', descriptor.digest.slice('sha256:'.length)));
}

let workDir: string;

beforeAll(async () => {
  ensureTools(TOOLS.umoci, TOOLS.cpio);
  if (process.getuid?.() !== 0) throw new Error('this test runs umoci unpack and cpio as root (devices, owners); run it as root');
  workDir = await mkdtemp(join(tmpdir(), 'rampack-flatten-umoci-'));
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

/** Writes the image's layout and has umoci unpack it (umask 022, as a container runtime runs). */
async function umociTree(name: string, workName = name): Promise<{ layout: string; umoci: ObservedTree }> {
  const layout = join(workDir, workName, 'layout');
  const bundle = join(workDir, workName, 'bundle');
  await writeOciLayout(layout, IMAGES[name]!, 'test');
  execFileSync('sh', ['-c', 'umask 022 && umoci unpack --image "$1:test" "$2"', 'sh', layout, bundle], { stdio: 'pipe' });
  return { layout, umoci: await observeDisk(join(bundle, 'rootfs')) };
}

/** rampack's archive of the layout's image (no agent), the way the build writes it. */
async function rampackArchive(layout: string, archive: string): Promise<void> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const manifest = JSON.parse((await readBlob(layout, index.manifests[0]!)).toString()) as ImageManifest;
  const config = JSON.parse((await readBlob(layout, manifest.config)).toString()) as ImageConfig;
  const layers: UnpackedLayer[] = [];
  for (const [position, descriptor] of manifest.layers.entries()) {
    const blobPath = join(layout, 'blobs', 'sha256', descriptor.digest.slice('sha256:'.length));
    layers.push(await unpackLayer({ blob: blobPath, descriptor, diffId: config.rootfs.diff_ids[position]!, cache: new Cache(join(workDir, 'cache')) }));
  }
  await pipeline(newcArchive(flattenLayers(layers).entries), createWriteStream(archive));
}

/** Checks that every hard-link group is one inode whose data the archive carries exactly once. */
async function expectDataOncePerInode(archive: string): Promise<void> {
  const recordsByInode = new Map<number, { nlink: number; sizes: number[] }>();
  for await (const record of readNewcArchive(createReadStream(archive), { data: 'skip' })) {
    const group = recordsByInode.get(record.ino) ?? { nlink: record.nlink, sizes: [] };
    group.sizes.push(record.size);
    recordsByInode.set(record.ino, group);
  }
  for (const [ino, { nlink, sizes }] of recordsByInode) {
    if (sizes.length === 1) continue;
    expect(sizes.length, `inode ${ino}`).toBe(nlink);
    expect(sizes.filter((size) => size > 0).length, `inode ${ino}`).toBeLessThanOrEqual(1);
  }
}

describe.each(Object.keys(IMAGES))('the %s image', (name) => {
  it('unpacks from rampack’s archive to the tree umoci unpack produces', async () => {
    const { layout, umoci } = await umociTree(name);
    const archive = join(workDir, name, 'rootfs.cpio');
    await rampackArchive(layout, archive);
    await expectDataOncePerInode(archive);
    const extracted = join(workDir, name, 'extracted');
    await mkdir(extracted);
    execFileSync('sh', ['-c', 'cpio -idm --quiet --no-absolute-filenames < "$1"', 'sh', archive], { cwd: extracted });
    const ours = await observeDisk(extracted);
    expect(Object.fromEntries(ours.observed)).toEqual(Object.fromEntries(umoci.observed));
    expect(ours.linkGroups).toEqual(umoci.linkGroups);
  });
});

describe('the scenarios exercise what they claim to', () => {
  it('has the cases umoci must agree on', async () => {
    const trees = Object.fromEntries(await Promise.all(Object.keys(IMAGES).map(async (name) => [name, (await umociTree(name, `${name}-check`)).umoci] as const)));
    const whiteouts = trees.whiteouts!.observed;
    expect([...whiteouts.keys()].filter((path) => path.startsWith('opq/')).sort()).toEqual(['opq/new-after', 'opq/new-before', 'opq/newdir']);
    expect(whiteouts.has('etc/gone') || whiteouts.has('tree/a') || whiteouts.has('dir2link/child')).toBe(false);
    expect(whiteouts.get('file2fifo')?.type).toBe('fifo');
    expect(trees['hard-links']!.linkGroups).toEqual([
      ['bin/tool', 'bin/tool-a', 'bin/tool-b', 'bin/tool-c', 'bin/tool-d'],
      ['empty', 'empty-link'],
      ['run/fifo', 'run/fifo-link'],
    ]);
    expect(trees['hard-links']!.observed.get('bin/over-link')?.sha256).toBe(sha256(Buffer.from('over v1')));
    expect(trees['hard-links']!.observed.get('bin/del-link')?.type).toBe('file');
    expect(trees.paths!.observed.get('real/sub/f4')?.type).toBe('file');
    expect(trees.paths!.observed.get(latin1('odd/tab\there\xff\xfe\x01').toString('latin1'))?.type).toBe('file');
    expect(trees.metadata!.observed.get('dev/big')?.device).toBe('4095:1048575');
    expect(trees.metadata!.observed.get('home/big-ids')).toMatchObject({ uid: 3_000_000, gid: 2_097_153 });
    for (const format of PAX_SPARSE_FORMATS) {
      for (const spec of SPARSE_FILES) {
        const expected = { type: 'file', size: spec.size, sha256: sha256(sparseContents(spec)) };
        expect(trees.sparse!.observed.get(`${format}/${spec.name}`), `${format}/${spec.name}`).toMatchObject(expected);
      }
    }
  });
});

describe('booted on Debian’s kernel', () => {
  /** What rampack adds to the image (docs/initramfs-layout.md), and what the kernel's default archive adds. */
  const ADDED = new Set(['init', 'etc/rampack', 'etc/rampack/image.json', 'etc/rampack/xattrs.json', 'dev', 'dev/console', 'proc', 'sys', 'run', 'root', 'tmp', 'etc']);

  it.each(Object.keys(IMAGES))('the agent sees the %s image as umoci unpacks it', async (name) => {
    ensureTools(TOOLS.qemuX86);
    const { layout, umoci } = await umociTree(name, `${name}-boot`);
    const out = join(workDir, `${name}-boot`, 'out');
    const agent = await buildTestAgent('x86_64');
    const result = await runRampack([
      'build', '--image', `oci:${layout}:test`, '--agent', agent, '--arch', 'x86_64', '--language', 'faithful',
      '--version', name, '--out', out, '--cache', join(workDir, 'cache'), '--compression', 'gzip',
      // Small shards: the tree is cut into several archives, as large images are.
      '--shard-size', '64KiB',
    ]);
    expect(result.code, result.stderr).toBe(0);
    const boot = await bootInitramfs({
      arch: 'x86_64',
      kernel: await ensureDebianKernel('x86_64', KERNEL_CACHE),
      initrd: join(out, `faithful-${name}-x86_64.cpio.gz`),
      agentArgs: ['tree', '/'],
      timeoutMs: 120_000,
    });
    expect(boot.timedOut, boot.output).toBe(false);
    const guest = observeAgentTree(parseTree(boot.output));
    const added = [...guest.observed.keys()].filter((path) => !umoci.observed.has(path));
    expect(added.filter((path) => !ADDED.has(path))).toEqual([]);
    for (const path of added) guest.observed.delete(path);
    expect(Object.fromEntries(guest.observed)).toEqual(Object.fromEntries(umoci.observed));
    expect(guest.linkGroups).toEqual(umoci.linkGroups);
  }, 240_000);
});
