import { mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { emptyManifest, mergeImages, readManifest, writeManifest, type ManifestImage } from '../../src/manifest/manifest.ts';

function image(version: string, arch: 'x86_64' | 'aarch64', isDefault: boolean): ManifestImage {
  return {
    language: 'go', version, default: isDefault, arch, file: `go-${version}-${arch}.cpio.gz`, sha256: 'ab', size: 1,
    compression: 'gzip', uncompressedSize: 2, agent: { sha256: 'cd' }, env: [],
    source: { reference: `golang:${version}`, manifestDigest: 'sha256:1', configDigest: 'sha256:2' },
  };
}

describe('manifest', () => {
  it('merges by language, version and arch, sorted, with one default per language and arch', () => {
    let manifest = mergeImages(emptyManifest(), [image('1.24', 'x86_64', true), image('1.24', 'aarch64', true)]);
    manifest = mergeImages(manifest, [image('1.25', 'x86_64', true)]);
    expect(manifest.images.map((i) => `${i.version}/${i.arch}/${i.default}`)).toEqual([
      '1.24/aarch64/true',
      '1.24/x86_64/false',
      '1.25/x86_64/true',
    ]);
    manifest = mergeImages(manifest, [{ ...image('1.24', 'aarch64', true), size: 99 }]);
    expect(manifest.images).toHaveLength(3);
    expect(manifest.images[0]!.size).toBe(99);
  });

  it('writes atomically, and not at all when nothing changed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rampack-manifest-'));
    const path = join(dir, 'manifest.json');
    const manifest = mergeImages(await readManifest(path), [image('1.24', 'x86_64', true)]);
    expect(await writeManifest(path, manifest)).toBe(true);
    const before = statSync(path).mtimeMs;
    expect(await writeManifest(path, mergeImages(await readManifest(path), [image('1.24', 'x86_64', true)]))).toBe(false);
    expect(statSync(path).mtimeMs).toBe(before);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual(manifest);
    expect(readdirSync(dir)).toEqual(['manifest.json']);
  });

  it('refuses a manifest it cannot read, naming it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rampack-manifest-'));
    const path = join(dir, 'manifest.json');
    writeFileSync(path, '{"schemaVersion": 7, "images": []}');
    await expect(readManifest(path)).rejects.toThrow(InputError);
    await expect(readManifest(path)).rejects.toThrow(`manifest ${path} has schemaVersion 7`);
    writeFileSync(path, '{');
    await expect(readManifest(path)).rejects.toThrow('is not valid JSON');
  });
});
