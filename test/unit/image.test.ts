import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError, VerificationError } from '../../src/errors.ts';
import { OciLayoutStore, parseOciLayoutReference } from '../../src/sources/oci-layout.ts';
import { selectPlatform } from '../../src/oci/platform.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { writeBlob, writeOciLayout, type ImageSpec } from '../helpers/oci-builder.ts';
import { testDirectory } from '../helpers/temp.ts';

const entry = (architecture: string, extra: Partial<Descriptor> = {}, variant?: string): Descriptor => ({
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  digest: `sha256:${architecture.padEnd(64, '0').slice(0, 64)}`,
  size: 1,
  platform: { os: 'linux', architecture, variant },
  ...extra,
});

const INDEX_TYPE = 'application/vnd.oci.image.index.v1+json';

describe('platform selection', () => {
  it('maps x86_64 to amd64 and aarch64 to arm64, skipping attestations', () => {
    const attestation = entry('unknown', { annotations: { 'vnd.docker.reference.type': 'attestation-manifest' } });
    const manifests = [attestation, entry('arm', {}, 'v7'), entry('arm64', {}, 'v8'), entry('amd64')];
    expect(selectPlatform(manifests, 'x86_64', 'img').platform?.architecture).toBe('amd64');
    expect(selectPlatform(manifests, 'aarch64', 'img').platform?.variant).toBe('v8');
  });

  it('lists what an index has when the arch is missing', () => {
    expect(() => selectPlatform([entry('amd64'), entry('s390x')], 'aarch64', 'golang:1')).toThrow(
      'image golang:1 has no linux/arm64 (aarch64) image; it has: linux/amd64, linux/s390x',
    );
  });
});

describe('OCI layout references', () => {
  it.each([
    ['oci:/a/b', { dir: '/a/b' }],
    ['oci:/a/b:1.0', { dir: '/a/b', tag: '1.0' }],
    ['oci:./x:y/z', { dir: './x:y/z' }],
    [`oci:/a:1@sha256:${'b'.repeat(64)}`, { dir: '/a', tag: '1', digest: `sha256:${'b'.repeat(64)}` }],
  ])('parses %s', (text, expected) => {
    expect(parseOciLayoutReference(text)).toEqual({ tag: undefined, digest: undefined, ...expected });
  });
});

describe('resolving images from an OCI layout', () => {
  const dir = testDirectory('layout');
  const spec = (architecture: string): ImageSpec => ({ architecture, layers: [{ entries: [{ name: 'a', content: architecture }] }] });
  let single: string;
  let multi: string;

  beforeAll(async () => {
    single = join(dir, 'single');
    multi = join(dir, 'multi');
    await writeOciLayout(single, spec('amd64'), 'v1');
    await writeOciLayout(multi, [spec('amd64'), spec('arm64')], 'v2');
  });

  it('resolves a single-arch image and checks its arch', async () => {
    const image = await resolveImage(new OciLayoutStore({ dir: single, tag: 'v1' }), 'x86_64');
    expect(image.indexDigest).toBeUndefined();
    expect(image.layers).toHaveLength(1);
    expect(image.config.architecture).toBe('amd64');
    await expect(resolveImage(new OciLayoutStore({ dir: single }), 'aarch64')).rejects.toThrow('is for amd64, not arm64');
  });

  it('picks the platform manifest out of an index', async () => {
    const image = await resolveImage(new OciLayoutStore({ dir: multi, tag: 'v2' }), 'aarch64');
    expect(image.indexDigest).toMatch(/^sha256:/);
    expect(image.config.architecture).toBe('arm64');
  });

  it('names the tags a layout has when the wanted one is missing', async () => {
    await expect(resolveImage(new OciLayoutStore({ dir: single, tag: 'v9' }), 'x86_64')).rejects.toThrow('has no image tagged "v9"; tags: v1');
    await expect(resolveImage(new OciLayoutStore({ dir: join(dir, 'none') }), 'x86_64')).rejects.toThrow(InputError);
  });

  it('detects a tampered config', async () => {
    const index = JSON.parse(readFileSync(join(single, 'index.json'), 'utf8'));
    const manifest = JSON.parse(readFileSync(join(single, 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'));
    const configPath = join(single, 'blobs/sha256', manifest.config.digest.slice(7));
    writeFileSync(configPath, readFileSync(configPath, 'utf8').replace('amd64', 'AMD64'));
    await expect(resolveImage(new OciLayoutStore({ dir: single }), 'x86_64')).rejects.toThrow(VerificationError);
  });

  /** The multi-arch layout with its index wrapped in `levels` more indexes (index -> index -> ... -> manifest). */
  async function nestedLayout(levels: number): Promise<string> {
    const nested = join(dir, `nested-${levels}`);
    await writeOciLayout(nested, [spec('amd64'), spec('arm64')], 'v3');
    let [top] = JSON.parse(readFileSync(join(nested, 'index.json'), 'utf8')).manifests as Descriptor[];
    for (let level = 0; level < levels; level++) {
      const wrapper = { schemaVersion: 2, mediaType: INDEX_TYPE, manifests: [{ mediaType: INDEX_TYPE, digest: top!.digest, size: top!.size, platform: { os: 'linux', architecture: 'amd64' } }] };
      top = { ...(await writeBlob(nested, Buffer.from(JSON.stringify(wrapper)), INDEX_TYPE)), annotations: { 'org.opencontainers.image.ref.name': 'v3' } };
    }
    writeFileSync(join(nested, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [top] }));
    return nested;
  }

  it('follows a nested index (index -> index -> manifest) to the image, and says so when they nest too deep', async () => {
    const image = await resolveImage(new OciLayoutStore({ dir: await nestedLayout(1), tag: 'v3' }), 'x86_64');
    expect(image.config.architecture).toBe('amd64');
    const tooDeep = resolveImage(new OciLayoutStore({ dir: await nestedLayout(4), tag: 'v3' }), 'x86_64');
    await expect(tooDeep).rejects.toThrow(InputError);
    await expect(tooDeep).rejects.toThrow(/is an index nested 4 levels deep; rampack follows at most 3 levels of nested indexes/);
  });
});
