/**
 * Faithful images through the CLI, as a user runs it: the same image builds
 * to the same bytes whatever the time zone, umask and cache state; dropped
 * extended attributes reach /etc/rampack/xattrs.json; a file newc cannot
 * hold, and broken layers, fail with errors that name them.
 * (The tree itself is checked against umoci in flatten-umoci.test.ts.)
 */
import { decompressedInitramfs, splitArchives } from '../helpers/initramfs.ts';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNewcArchive } from '../../src/cpio/reader.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { type CliResult, runRampack } from '../helpers/cli.ts';
import { type ImageSpec, rawTar, tarBytes, TAR_END, tarHeader, writeBlob, writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const GIB = 1024 ** 3;

let work: string;
let agent: string;

beforeAll(async () => {
  ensureTools(TOOLS.musl);
  work = await mkdtemp(join(tmpdir(), 'rampack-faithful-'));
  agent = await buildTestAgent('x86_64');
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Runs the CLI with `umask` (inherited at spawn; vitest runs this file in its own process) and extra environment. */
function rampackUnder(umask: number, env: NodeJS.ProcessEnv, args: string[]): Promise<CliResult> {
  const previous = process.umask(umask);
  try {
    return runRampack(args, { env });
  } finally {
    process.umask(previous);
  }
}

function buildArgs(image: string, out: string, cache: string, extra: string[] = []): string[] {
  return ['build', '--image', image, '--agent', agent, '--arch', 'x86_64', '--language', 'faithful', '--version', '1', '--out', out, '--cache', cache, ...extra];
}

async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** The uncompressed newc bytes of a gzip initramfs, entry by entry, with data. */
async function archiveRecords(initramfs: string) {
  const cpio = execFileSync('gzip', ['-dc', initramfs], { maxBuffer: 1 << 30 });
  const records = [];
  for await (const record of readNewcArchive(Readable.from([cpio]))) records.push(record);
  return records;
}

/** A security.capability value: v2, effective, cap_net_raw permitted. */
const NET_RAW_CAPABILITY = Buffer.from([0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** Mixed encodings (zstd too), links, devices, odd names, and mtimes that a TZ could shift if misread. */
const IMAGE: ImageSpec = {
  created: '2024-03-10T02:30:00Z',
  layers: [
    {
      compression: 'zstd',
      entries: [
        { name: 'bin', type: 'directory' },
        { name: 'bin/tool', content: 'tool', mode: 0o4755, mtime: 1_710_037_800 },
        { name: 'bin/tool-link', type: 'link', linkname: 'bin/tool' },
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 },
        { name: 'deep/implicit/parents', content: 'p' },
        { name: 'utf8/日本', content: 'name' },
      ],
    },
    { compression: 'gzip', entries: [{ name: 'bin/.wh.tool-link', content: '' }, { name: 'etc/hosts', content: '127.0.0.1 localhost\n', pax: { mtime: '1700000000.5' } }] },
    { compression: 'none', entries: [] },
  ],
};

describe('reproducible builds', () => {
  it('gives the same bytes with another TZ and umask, with a cold cache, a warm layer cache and only a warm blob cache', async () => {
    ensureTools(TOOLS.registry, TOOLS.skopeo);
    const layout = join(work, 'repro-layout');
    await writeOciLayout(layout, IMAGE, '1');
    const registry = await startRegistry();
    try {
      await pushLayout(layout, '1', registry.host, 'faithful/repro');
      const image = `${registry.host}/faithful/repro:1`;
      const cache = join(work, 'repro-cache');
      const runs = [
        { name: 'cold', umask: 0o022, env: { TZ: 'UTC' } },
        { name: 'warm', umask: 0o077, env: { TZ: 'Asia/Kolkata' } },
        { name: 'blobs-only', umask: 0o027, env: { TZ: 'America/St_Johns', LC_ALL: 'C' } },
      ];
      const outputs: string[] = [];
      for (const run of runs) {
        if (run.name === 'blobs-only') await rm(join(cache, 'layers'), { recursive: true });
        const out = join(work, `repro-${run.name}`);
        const result = await rampackUnder(run.umask, run.env, buildArgs(image, out, cache, ['--compression', 'gzip']));
        expect(result.code, result.stderr).toBe(0);
        outputs.push(out);
      }
      expect(await readdir(join(cache, 'blobs', 'sha256'))).not.toEqual([]);
      const [first, ...others] = outputs as [string, ...string[]];
      const file = 'faithful-1-x86_64.cpio.gz';
      expect((await stat(join(outputs[1]!, file))).mode & 0o777).toBe(0o600); // the umask really applied
      for (const out of others) {
        expect(await sha256File(join(out, file))).toBe(await sha256File(join(first, file)));
        expect(await readFile(join(out, 'manifest.json'), 'utf8')).toBe(await readFile(join(first, 'manifest.json'), 'utf8'));
      }
      // The image's part, then rampack's archive: each sorted, every parent before its children.
      const archives = splitArchives(decompressedInitramfs(join(first, file)));
      expect(archives.length).toBeGreaterThanOrEqual(2);
      const seen = new Set<string>();
      for (const archive of archives) {
        const names: string[] = [];
        for await (const record of readNewcArchive(Readable.from([archive]), { data: 'skip' })) names.push(record.name);
        expect(names).toEqual([...names].sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1'))));
        for (const name of names) {
          if (name.includes('/')) expect(seen.has(name.slice(0, name.lastIndexOf('/'))), name).toBe(true);
          seen.add(name);
        }
      }
      const records = await archiveRecords(join(first, file));
      expect(records.find((record) => record.name === 'bin/tool')).toMatchObject({ mtime: 1_710_037_800, nlink: 1, mode: 0o104755 });
      expect(records.find((record) => record.name === 'etc/hosts')).toMatchObject({ mtime: 1_700_000_000 });
    } finally {
      await registry.stop();
    }
  });
});

describe('extended attributes', () => {
  it('warns naming the files and records path, name and base64 value in /etc/rampack/xattrs.json', async () => {
    const layout = join(work, 'xattr-layout');
    await writeOciLayout(
      layout,
      {
        layers: [
          {
            entries: [
              { name: 'usr/bin/ping', content: 'ping', mode: 0o755, pax: { 'SCHILY.xattr.security.capability': NET_RAW_CAPABILITY.toString('latin1') } },
              { name: 'usr/bin/ping6', type: 'link', linkname: 'usr/bin/ping' },
              { name: 'data/tagged', content: 't', pax: { 'SCHILY.xattr.user.origin': 'layer one' } },
              // Replaced by the agent: its attributes must not be restored onto /init.
              { name: 'init', content: 'image init', pax: { 'SCHILY.xattr.user.stale': 'x' } },
            ],
          },
        ],
      },
      '1',
    );
    const out = join(work, 'xattr-out');
    const result = await rampackUnder(0o022, {}, buildArgs(`oci:${layout}:1`, out, join(work, 'xattr-cache'), ['--compression', 'gzip']));
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain('/usr/bin/ping');
    expect(result.stderr).toContain('/usr/bin/ping6');
    expect(result.stderr).toContain('/data/tagged');
    const records = await archiveRecords(join(out, 'faithful-1-x86_64.cpio.gz'));
    const json = records.find((record) => record.name === 'etc/rampack/xattrs.json');
    expect(json).toMatchObject({ mode: 0o100644, uid: 0, gid: 0 });
    expect(JSON.parse(json!.data!.toString('utf8'))).toEqual({
      schemaVersion: 1,
      xattrs: [
        { path: '/data/tagged', name: 'user.origin', value: Buffer.from('layer one').toString('base64') },
        { path: '/usr/bin/ping', name: 'security.capability', value: NET_RAW_CAPABILITY.toString('base64') },
        { path: '/usr/bin/ping6', name: 'security.capability', value: NET_RAW_CAPABILITY.toString('base64') },
      ],
    });
  });
});

/** Writes a blob from a file already on disk (content-addressed by its sha256). */
async function moveIntoLayout(layout: string, path: string, mediaType: string) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  const hex = hash.digest('hex');
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
  await rename(path, join(layout, 'blobs', 'sha256', hex));
  return { digest: `sha256:${hex}`, size: (await stat(join(layout, 'blobs', 'sha256', hex))).size, mediaType };
}

/** An OCI layout around already written layer blobs, whose diff_ids are given. */
async function layoutAround(layout: string, layers: { digest: string; size: number; mediaType: string }[], diffIds: string[]): Promise<void> {
  const config = { architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } };
  const configBlob = await writeBlob(layout, Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.config.v1+json');
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: configBlob, layers };
  const manifestBlob = await writeBlob(layout, Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...manifestBlob, annotations: { 'org.opencontainers.image.ref.name': '1' } }] }));
}

describe('files newc cannot hold', () => {
  it('fails naming a file of exactly 4 GiB (one byte over newc’s limit), without writing GiBs to the cache', async () => {
    // The layer tar is sparse: a header claiming 4 GiB, a hole for the data, the end marker.
    const layout = join(work, 'huge-layout');
    const tarPath = join(work, 'huge.tar');
    const size = 4 * GIB;
    const file = await open(tarPath, 'w');
    await file.write(rawTar([{ name: 'srv', typeflag: '5', mode: 0o755 }]).subarray(0, 512));
    await file.write(tarHeader({ name: 'srv/disk.img', size }));
    await file.write(TAR_END, 0, TAR_END.length, 1024 + size);
    await file.close();
    const layer = await moveIntoLayout(layout, tarPath, 'application/vnd.oci.image.layer.v1.tar');
    await layoutAround(layout, [layer], [layer.digest]);

    const cache = join(work, 'huge-cache');
    const out = join(work, 'huge-out');
    const result = await rampackUnder(0o022, {}, buildArgs(`oci:${layout}:1`, out, cache));
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`"srv/disk.img" is ${size} bytes: newc cannot hold a file of 4 GiB or more`);
    expect(result.stderr).not.toMatch(/^\s+at /m);
    const cachedTar = join(cache, 'layers', 'sha256', `${layer.digest.slice(7)}.tar`);
    const cached = await stat(cachedTar);
    expect(cached.size).toBe(1024 + size + TAR_END.length);
    expect(cached.blocks * 512).toBeLessThan(1024 * 1024); // holes, not 5 GiB of zeros
    expect(await readdir(out).catch(() => [])).toEqual([]);
  }, 180_000);
});

describe('broken layers', () => {
  it.each([
    ['gzip', gzipSync, 'application/vnd.oci.image.layer.v1.tar+gzip'],
    ['zstd', zstdCompressSync, 'application/vnd.oci.image.layer.v1.tar+zstd'],
  ] as const)('names the layer digest when its %s stream is truncated or corrupt', async (codec, compress, mediaType) => {
    const tar = await tarBytes([{ name: 'etc/data', content: 'x'.repeat(100_000) }]);
    const compressed = compress(tar);
    const damaged = [compressed.subarray(0, compressed.length - 30), Buffer.concat([compressed.subarray(0, 20), Buffer.alloc(30, 0x55), compressed.subarray(50)])];
    for (const [index, blob] of damaged.entries()) {
      const layout = join(work, `broken-${codec}-${index}`);
      const layer = await writeBlob(layout, blob, mediaType);
      await layoutAround(layout, [layer], [`sha256:${createHash('sha256').update(tar).digest('hex')}`]);
      const result = await rampackUnder(0o022, {}, buildArgs(`oci:${layout}:1`, join(layout, 'out'), join(layout, 'cache')));
      expect(result.code, result.stderr).toBe(3);
      // zstd frames carry no checksum by default: damage may decode to garbage, which the tar reader then rejects.
      expect(result.stderr).toMatch(new RegExp(`error: layer ${layer.digest}(:)? is (corrupt|not a valid tar|truncated)`));
      expect(result.stderr).not.toMatch(/^\s+at /m);
    }
  });
});
