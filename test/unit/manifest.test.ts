import { mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { emptyManifest, mergeFragments, mergeImages, readManifest, writeManifest, type Manifest, type ManifestImage } from '../../src/manifest/manifest.ts';
import { testDirectory } from '../helpers/temp.ts';

const work = testDirectory('manifest');

function image(version: string, arch: 'x86_64' | 'aarch64', isDefault: boolean): ManifestImage {
  return {
    language: 'go', version, default: isDefault, arch, file: `go-${version}-${arch}.cpio.gz`, sha256: 'ab'.repeat(32), size: 1,
    compression: 'gzip', uncompressedSize: 2, agent: { sha256: 'cd'.repeat(32) }, env: [],
    boot: { cmdline: 'rootfstype=ramfs', minMemoryMiB: 80, minKernel: '3.7', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y'] },
    source: { reference: `golang:${version}`, manifestDigest: `sha256:${'1'.repeat(64)}`, configDigest: `sha256:${'2'.repeat(64)}` },
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
    const dir = mkdtempSync(join(work, 'case-'));
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
    const dir = mkdtempSync(join(work, 'case-'));
    const path = join(dir, 'manifest.json');
    writeFileSync(path, '{"schemaVersion": 7, "images": []}');
    await expect(readManifest(path)).rejects.toThrow(InputError);
    await expect(readManifest(path)).rejects.toThrow(`manifest ${path} has schemaVersion 7`);
    writeFileSync(path, '{');
    await expect(readManifest(path)).rejects.toThrow('is not valid JSON');
  });

  it.each([
    ['a file outside its directory', (m: Manifest) => (m.images[0]!.file = '../../etc/passwd'), 'images[0].file: must match pattern'],
    ['an absolute file', (m: Manifest) => (m.images[0]!.file = '/boot/initrd'), 'images[0].file: must match pattern'],
    ['a short sha256', (m: Manifest) => (m.images[0]!.sha256 = 'abc'), 'images[0].sha256: must match pattern'],
    ['an unknown arch', (m: Manifest) => ((m.images[0] as { arch: string }).arch = 'riscv64'), 'images[0].arch: must be one of "x86_64", "aarch64"'],
    ['a missing size', (m: Manifest) => delete (m.images[0] as Partial<ManifestImage>).size, 'images[0]: missing required field "size"'],
  ])('refuses %s, naming the field', async (_name, spoil, message) => {
    const path = join(mkdtempSync(join(work, 'case-')), 'manifest.json');
    const manifest = mergeImages(emptyManifest(), [image('1.24', 'x86_64', true)]);
    spoil(manifest);
    writeFileSync(path, JSON.stringify(manifest));
    await expect(readManifest(path)).rejects.toThrow(`manifest ${path}: ${message}`);
  });

  it('accepts fields it does not know (they may be added within a schemaVersion)', async () => {
    const path = join(mkdtempSync(join(work, 'case-')), 'manifest.json');
    const manifest = mergeImages(emptyManifest(), [image('1.24', 'x86_64', true)]);
    writeFileSync(path, JSON.stringify({ ...manifest, publishedAt: 'later', images: [{ ...manifest.images[0], kernel: 'x' }] }));
    expect((await readManifest(path)).images).toHaveLength(1);
  });
});

describe('merging fragments', () => {
  const fragment = (path: string, ...images: ManifestImage[]) => ({ path, manifest: { ...emptyManifest(), images } });

  it('joins cells from many fragments, sorted, identical duplicates allowed', () => {
    const merged = mergeFragments([
      fragment('b.json', image('1.25', 'x86_64', true)),
      fragment('a.json', image('1.24', 'aarch64', false), image('1.24', 'x86_64', false)),
      fragment('c.json', image('1.25', 'x86_64', true)),
    ]);
    expect(merged.images.map((i) => `${i.version}/${i.arch}`)).toEqual(['1.24/aarch64', '1.24/x86_64', '1.25/x86_64']);
  });

  it('refuses one cell with two contents, naming both fragments', () => {
    expect(() => mergeFragments([fragment('a.json', image('1.25', 'x86_64', true)), fragment('b.json', { ...image('1.25', 'x86_64', true), size: 7 })])).toThrow(
      'fragments a.json and b.json both hold go 1.25 x86_64, with different contents',
    );
  });

  it('refuses two default versions for one language and arch', () => {
    expect(() => mergeFragments([fragment('a.json', image('1.25', 'x86_64', true)), fragment('b.json', image('1.24', 'x86_64', true))])).toThrow(
      'both mark a default go for x86_64: 1.25 and 1.24',
    );
  });
});
