/**
 * `rampack publish` to a directory, as a user runs it: content-addressed
 * files, the manifest written last and signed, old files kept until
 * --prune, and `rampack manifest verify` as the runtime's check.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { emptyManifest, mergeImages, serializeManifest, type Manifest, type ManifestImage } from '../../src/manifest/manifest.ts';
import { runRampack } from '../helpers/cli.ts';

let work: string;
let site: string;
let key: string;
let publicKey: string;

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A build output directory with one initramfs per version (contents made up: publish never looks inside). */
function buildOutput(name: string, contents: Record<string, string>): string {
  const out = join(work, name);
  mkdirSync(out, { recursive: true });
  const images: ManifestImage[] = Object.entries(contents).map(([version, content]) => {
    const file = `go-${version}-x86_64.cpio.zst`;
    writeFileSync(join(out, file), content);
    return {
      language: 'go', version, default: version === '1.27', arch: 'x86_64', file, sha256: sha256(content), size: content.length,
      compression: 'zstd', uncompressedSize: 100, agent: { sha256: 'cd'.repeat(32) }, env: ['PATH=/usr/local/go/bin'],
      boot: { cmdline: 'rootfstype=ramfs', minMemoryMiB: 80, minKernel: '3.7', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y'] },
      source: { reference: `docker.io/library/golang:${version}-trixie`, manifestDigest: `sha256:${'1'.repeat(64)}`, configDigest: `sha256:${'2'.repeat(64)}` },
    };
  });
  writeFileSync(join(out, 'manifest.json'), serializeManifest(mergeImages(emptyManifest(), images)));
  return join(out, 'manifest.json');
}

function publishedManifest(): Manifest {
  return JSON.parse(readFileSync(join(site, 'manifest.json'), 'utf8')) as Manifest;
}

const siteFiles = () => readdirSync(join(site, 'files')).sort();

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'rampack-publish-'));
  site = join(work, 'site');
  key = join(work, 'signing.key');
  publicKey = join(work, 'signing.pub');
  expect((await runRampack(['keygen', '--private', key, '--public', publicKey])).code).toBe(0);
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('rampack publish --to DIR', () => {
  it('copies files under content-addressed names, then writes a signed manifest naming them', async () => {
    const manifest = buildOutput('out1', { '1.26': 'go 1.26 initramfs', '1.27': 'go 1.27 initramfs' });
    const result = await runRampack(['publish', manifest, '--to', site, '--key', key]);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout).copied).toHaveLength(2);
    const published = publishedManifest();
    expect(published.images.map((i) => i.file)).toEqual([
      `files/go-1.26-x86_64-${sha256('go 1.26 initramfs')}.cpio.zst`,
      `files/go-1.27-x86_64-${sha256('go 1.27 initramfs')}.cpio.zst`,
    ]);
    expect(readFileSync(join(site, published.images[1]!.file), 'utf8')).toBe('go 1.27 initramfs');
    expect(readdirSync(site).sort()).toEqual(['files', 'manifest.json', 'manifest.json.sig']);
    const verify = await runRampack(['manifest', 'verify', join(site, 'manifest.json'), '--key', publicKey]);
    expect(verify.stderr).toContain('signature valid, 2 files match');
    expect(verify.code).toBe(0);
  });

  it('keeps the files of the previous manifest, reuses unchanged ones, and prunes only when asked', async () => {
    const before = siteFiles();
    const manifest = buildOutput('out2', { '1.26': 'go 1.26 initramfs', '1.27': 'go 1.27 rebuilt' });
    const result = await runRampack(['publish', manifest, '--to', site, '--key', key]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ copied: [expect.stringContaining('go-1.27')], reused: [expect.stringContaining('go-1.26')], pruned: [] });
    expect(siteFiles()).toEqual([...before, `go-1.27-x86_64-${sha256('go 1.27 rebuilt')}.cpio.zst`].sort());

    const pruned = await runRampack(['publish', manifest, '--to', site, '--key', key, '--prune']);
    expect(pruned.code).toBe(0);
    expect(JSON.parse(pruned.stdout).pruned).toEqual([`files/go-1.27-x86_64-${sha256('go 1.27 initramfs')}.cpio.zst`]);
    expect(siteFiles()).toEqual(publishedManifest().images.map((i) => i.file.slice('files/'.length)).sort());
    expect((await runRampack(['manifest', 'verify', join(site, 'manifest.json'), '--key', publicKey])).code).toBe(0);
  });

  it('refuses to replace a signed manifest with an unsigned one', async () => {
    const manifest = buildOutput('out3', { '1.27': 'go 1.27 unsigned' });
    const result = await runRampack(['publish', manifest, '--to', site], { env: { RAMPACK_SIGNING_KEY: '' } });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('holds a signed manifest');
    expect(publishedManifest().images).toHaveLength(2);
  });

  it('signs with the key in RAMPACK_SIGNING_KEY', async () => {
    const manifest = buildOutput('out4', { '1.27': 'go 1.27 from env' });
    const result = await runRampack(['publish', manifest, '--to', site], { env: { RAMPACK_SIGNING_KEY: readFileSync(key, 'utf8') } });
    expect(result.code).toBe(0);
    expect((await runRampack(['manifest', 'verify', join(site, 'manifest.json'), '--key', publicKey])).code).toBe(0);
  });

  it('publishes nothing from a build output whose file changed after its manifest', async () => {
    const manifest = buildOutput('out5', { '1.27': 'go 1.27 original' });
    writeFileSync(join(work, 'out5', 'go-1.27-x86_64.cpio.zst'), 'go 1.27 changed!');
    const before = readFileSync(join(site, 'manifest.json'));
    const result = await runRampack(['publish', manifest, '--to', site, '--key', key]);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain('the manifest says');
    expect(readFileSync(join(site, 'manifest.json')).equals(before)).toBe(true);
    expect(siteFiles().some((name) => name.includes(sha256('go 1.27 original')))).toBe(false);
  });

  it('verify fails with exit code 5 on a changed published file, naming it', async () => {
    const [image] = publishedManifest().images;
    writeFileSync(join(site, image!.file), 'tampered');
    const result = await runRampack(['manifest', 'verify', join(site, 'manifest.json'), '--key', publicKey]);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain(`${image!.file}: 8 bytes, the manifest says`);
    expect(existsSync(join(site, 'manifest.json.sig'))).toBe(true);
  });
});
