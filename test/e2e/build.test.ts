/**
 * The whole pipeline as a user runs it: images pushed to a real registry,
 * `rampack build` spawned as a process, its archive read back by GNU cpio and
 * bsdtar, and booted with Debian's kernel in QEMU with the test agent as /init.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import { minimumMemoryMiB } from '../../src/boot/memory.ts';
import { bootInitramfs } from '../../src/boot/qemu.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { decompressedInitramfs, extractWithCpio, listWithBsdtar } from '../helpers/initramfs.ts';
import { EXPECTED_ABSENT, EXPECTED_PRESENT, languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let agent: string;
let registry: Awaited<ReturnType<typeof startRegistry>>;
let layout: string;
let indexLayout: string;

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function readManifest(out: string): Manifest {
  return JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.cpio, TOOLS.bsdtar, TOOLS.zstd, TOOLS.qemuX86, TOOLS.musl);
  work = mkdtempSync(join(tmpdir(), 'rampack-e2e-'));
  agent = await buildTestAgent('x86_64');
  registry = await startRegistry();
  layout = join(work, 'layout');
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  await pushLayout(layout, '1.0', registry.host, 'lang/runtime');
  indexLayout = join(work, 'index-layout');
  await writeOciLayout(indexLayout, [languageImageSpec('amd64'), languageImageSpec('arm64')], '2.0');
  await pushLayout(indexLayout, '2.0', registry.host, 'lang/runtime', { all: true });
});

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('rampack build --image from a registry', () => {
  let out: string;
  let cache: string;

  beforeAll(async () => {
    out = join(work, 'out');
    cache = join(work, 'cache');
    const result = await runRampack([
      'build', '--image', `${registry.host}/lang/runtime:2.0`, '--agent', agent, '--arch', 'x86_64',
      '--language', 'lang', '--version', '2.0', '--out', out, '--cache', cache, '--compression', 'gzip', '--verbose',
    ]);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    // The boot below then checks that the kernel reads libdeflate's gzip (the test setup builds the addon).
    expect(result.stderr).toMatch(/compress started\n.*: compressing with libdeflate \d/);
  });

  it('writes a manifest whose digests match the files and the registry', () => {
    const manifest = readManifest(out);
    expect(manifest.schemaVersion).toBe(2);
    expect(manifest.images).toHaveLength(1);
    const [image] = manifest.images;
    expect(image).toMatchObject({ language: 'lang', version: '2.0', arch: 'x86_64', default: true, compression: 'gzip' });
    const file = join(out, image!.file);
    expect(image!.sha256).toBe(sha256File(file));
    expect(image!.size).toBe(lstatSync(file).size);
    expect(image!.agent.sha256).toBe(sha256File(agent));
    expect(image!.env).toContain('LANG_VERSION=1.0');
    // A small gzip image: ramfs, the gzip decompressor, and the memory rule's floor for a near-empty tree.
    expect(image!.boot).toMatchObject({ cmdline: 'rootfstype=ramfs', minKernel: '2.6', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_BINFMT_ELF=y', 'CONFIG_RD_GZIP=y'] });
    const emptyTree = minimumMemoryMiB({ arch: 'x86_64', compressedBytes: image!.size, tree: { pageBytes: 0, entries: 0 } });
    expect(image!.boot.minMemoryMiB).toBeGreaterThanOrEqual(emptyTree);
    expect(image!.boot.minMemoryMiB).toBeLessThanOrEqual(emptyTree + 8);
    const rawIndex = execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/lang/runtime:2.0`]);
    expect(image!.source.indexDigest).toBe(`sha256:${createHash('sha256').update(rawIndex).digest('hex')}`);
    const amd64 = JSON.parse(rawIndex.toString()).manifests.find((m: { platform: { architecture: string } }) => m.platform.architecture === 'amd64');
    expect(image!.source.manifestDigest).toBe(amd64.digest);
    expect(readdirSync(out).filter((name) => name.endsWith('.tmp'))).toEqual([]);
  });

  it('holds the flattened image plus the agent, as GNU cpio and bsdtar read it', () => {
    const { file, uncompressedSize } = readManifest(out).images[0]!;
    const root = extractWithCpio(join(out, file), mkdtempSync(join(work, 'extract-')));
    for (const path of EXPECTED_PRESENT) expect(() => lstatSync(join(root, path)), path).not.toThrow();
    for (const path of EXPECTED_ABSENT) expect(() => lstatSync(join(root, path)), path).toThrow();
    expect(readFileSync(join(root, 'etc/motd'), 'utf8')).toBe('patched motd\n');
    expect(readFileSync(join(root, 'init')).equals(readFileSync(agent))).toBe(true);
    expect(lstatSync(join(root, 'init')).mode & 0o7777).toBe(0o755);
    const console = lstatSync(join(root, 'dev/console'));
    expect(console.isCharacterDevice()).toBe(true);
    expect([Math.floor(console.rdev / 256), console.rdev % 256]).toEqual([5, 1]);
    expect(lstatSync(join(root, 'tmp')).mode & 0o7777).toBe(0o1777);
    expect(readlinkSync(join(root, 'bin/sh'))).toBe('busybox');
    expect(lstatSync(join(root, 'srv/data.txt'))).toMatchObject({ uid: 1000, gid: 1000 });
    const hello = lstatSync(join(root, 'opt/lang/bin/lang-hello'));
    expect(hello.nlink).toBe(2);
    expect(lstatSync(join(root, 'opt/lang/bin/lang-hello-link')).ino).toBe(hello.ino);
    expect(lstatSync(join(root, 'usr/lib/lang/libshared.so')).ino).toBe(lstatSync(join(root, 'usr/lib/base/libshared.so')).ino);
    const settings = JSON.parse(readFileSync(join(root, 'etc/rampack/image.json'), 'utf8'));
    expect(settings).toMatchObject({ language: 'lang', version: '2.0', arch: 'x86_64', workingDir: '/srv', cmd: ['lang-hello'] });
    const listing = listWithBsdtar(join(out, file));
    expect(listing).toContain('opt/lang/bin/lang-hello');
    const cpioBytes = decompressedInitramfs(join(out, file));
    expect(cpioBytes.length).toBe(uncompressedSize);
  });

  it('boots in QEMU: the agent runs as /init and runs the image’s toolchain from its PATH', async () => {
    const { file } = readManifest(out).images[0]!;
    const kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
    const boot = await bootInitramfs({
      arch: 'x86_64',
      kernel,
      initrd: join(out, file),
      agentArgs: ['image', ';;', 'run', 'lang-hello', ';;', 'run', 'cat', '/etc/motd'],
      timeoutMs: 90_000,
    });
    expect(boot.timedOut).toBe(false);
    expect(boot.output).toContain('RAMPACK-AGENT ready pid=1');
    expect(boot.output).toContain('"language": "lang"');
    expect(boot.output).toContain('hello from lang 1.0 in /srv as 0');
    expect(boot.output).toContain('patched motd');
    expect(boot.output).toMatch(/RAMPACK-RUN exit=0[\s\S]*RAMPACK-RUN exit=0/);
    expect(boot.output).toContain('RAMPACK-AGENT done');
  });

  it('rebuilds to the same bytes with a cold cache, another TZ and umask', async () => {
    const { file, sha256 } = readManifest(out).images[0]!;
    const again = join(work, 'out-again');
    const result = await runRampack(
      ['build', '--image', `${registry.host}/lang/runtime:2.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'lang',
        '--version', '2.0', '--out', again, '--cache', join(work, 'cache-2'), '--compression', 'gzip'],
      { env: { TZ: 'Asia/Kolkata' } },
    );
    expect(result.code).toBe(0);
    expect(sha256File(join(again, file))).toBe(sha256);
    expect(readFileSync(join(again, 'manifest.json'), 'utf8')).toBe(readFileSync(join(out, 'manifest.json'), 'utf8'));
  });
});

describe('rebuilding', () => {
  it('leaves an output alone when nothing changed, and rewrites it when the file was touched or the agent changed', async () => {
    const out = join(work, 'out-rebuild');
    const cache = join(work, 'cache-rebuild');
    const build = (agentFile: string) =>
      runRampack(['build', '--image', `oci:${layout}:1.0`, '--agent', agentFile, '--language', 'lang', '--version', '1.0', '--out', out, '--cache', cache]);
    expect((await build(agent)).code).toBe(0);
    const file = join(out, 'lang-1.0-x86_64.cpio.gz');
    const first = lstatSync(file);
    const again = await build(agent);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('file unchanged');
    expect(lstatSync(file)).toMatchObject({ ino: first.ino, mtimeMs: first.mtimeMs });
    utimesSync(file, new Date(), new Date(2000, 0, 1));
    const touched = await build(agent);
    expect(touched.stderr).toContain('image part from cache');
    expect(lstatSync(file).ino).not.toBe(first.ino);
    const otherAgent = join(work, 'agent-other');
    writeFileSync(otherAgent, Buffer.concat([readFileSync(agent), Buffer.from([0])]));
    const changed = await build(otherAgent);
    expect(changed.stderr).toContain('image part from cache');
    expect(readManifest(out).images[0]!.agent.sha256).toBe(sha256File(otherAgent));
    expect(readManifest(out).images[0]!.sha256).toBe(sha256File(file));
  });
});

describe('rampack build with recipes', () => {
  it('builds every version of a recipe into one manifest, zstd-compressed, from a registry and an OCI layout', async () => {
    const recipes = join(work, 'recipes');
    execFileSync('mkdir', ['-p', recipes]);
    writeFileSync(
      join(recipes, 'lang.yaml'),
      `language: lang\nimage: ${registry.host}/lang/runtime\nversions:\n  - version: "1.0"\n  - version: "2.0"\n    default: true\narches: [x86_64]\nagent: ${agent}\ncompression: zstd\nenv: [EXTRA=yes]\n`,
    );
    writeFileSync(
      join(recipes, 'local.yaml'),
      `language: local\nimage: oci:${layout}\nversions:\n  - version: "1.0"\narches: [x86_64]\nagent:\n  x86_64: ${agent}\n`,
    );
    const out = join(work, 'out-recipes');
    const result = await runRampack(['build', recipes, '--out', out, '--cache', join(work, 'cache')]);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    const { images } = readManifest(out);
    expect(images.map((i) => `${i.language}-${i.version}-${i.arch}-${i.default}-${i.compression}`)).toEqual([
      'lang-1.0-x86_64-false-zstd',
      'lang-2.0-x86_64-true-zstd',
      'local-1.0-x86_64-true-gzip',
    ]);
    expect(images[0]!.env).toContain('EXTRA=yes');
    const root = extractWithCpio(join(out, images[0]!.file), mkdtempSync(join(work, 'extract-')));
    expect(readFileSync(join(root, 'opt/lang/VERSION'), 'utf8')).toBe('1.0\n');
    expect(images[2]!.source.reference).toBe(`oci:${layout}:1.0`);
  });
});

describe('bad input', () => {
  it('names the recipe file and field, exits 3, and writes nothing', async () => {
    const recipe = join(work, 'bad.yaml');
    writeFileSync(recipe, 'language: go\nimage: docker.io/library/golang\nversions:\n  - version: "1.0"\n    tagg: x\n');
    const out = join(work, 'out-bad');
    const result = await runRampack(['build', recipe, '--out', out]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`recipe ${recipe}: versions[0]: unknown field "tagg"`);
    expect(() => readdirSync(out)).toThrow();
  });

  it('rejects an agent for the wrong architecture', async () => {
    const result = await runRampack([
      'build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--arch', 'aarch64', '--language', 'x', '--version', '1',
      '--out', join(work, 'out-arch'), '--cache', join(work, 'cache'),
    ]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`agent ${agent} is built for x86_64, but the image is for aarch64`);
  });

  it('rejects an agent that is not an ELF binary', async () => {
    const script = join(work, 'agent.sh');
    writeFileSync(script, '#!/bin/sh\necho hi\n');
    const result = await runRampack([
      'build', '--image', `oci:${layout}:1.0`, '--agent', script, '--language', 'x', '--version', '1', '--out', join(work, 'out-elf'),
    ]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`agent ${script} is not an ELF executable`);
  });

  it('reports a missing tag as an input error naming the image', async () => {
    const result = await runRampack([
      'build', '--image', `${registry.host}/lang/runtime:9.9`, '--agent', agent, '--arch', 'x86_64',
      '--out', join(work, 'out-missing'), '--cache', join(work, 'cache'),
    ]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain('lang/runtime');
    expect(result.stderr).not.toContain('    at ');
  });

  it('reports usage errors with exit code 2', async () => {
    const result = await runRampack(['build']);
    expect(result.code).toBe(2);
    expect((await runRampack(['build', '--bogus'])).code).toBe(2);
  });
});
