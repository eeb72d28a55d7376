/** Build outputs made up for manifest, signing and publish tests: a manifest and the files it names (contents arbitrary). */
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { emptyManifest, mergeImages, serializeManifest, type ManifestImage } from '../../src/manifest/manifest.ts';

/** The entry's boot requirements (the schemaVersion 2 contract); spread in, so the entry type may or may not declare them yet. */
const BOOT = { boot: { cmdline: 'rootfstype=ramfs', minMemoryMiB: 256, minKernel: '6.1', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_RD_GZIP=y'] } };

export function manifestEntry(version: string, isDefault: boolean, data: Buffer): ManifestImage {
  return {
    language: 'go', version, default: isDefault, arch: 'x86_64', file: `go-${version}.cpio.gz`,
    sha256: createHash('sha256').update(data).digest('hex'), size: data.length, compression: 'gzip', uncompressedSize: 9,
    agent: { sha256: 'cd'.repeat(32) }, env: [],
    source: { reference: `docker.io/library/golang:${version}`, manifestDigest: `sha256:${'1'.repeat(64)}`, configDigest: `sha256:${'2'.repeat(64)}` },
    ...BOOT,
  };
}

/** A new directory under `parent` with one file per version (the last one the default) and its unsigned manifest; returns the manifest's path. */
export function writeBuildOutput(parent: string, contents: Record<string, string>): string {
  const out = mkdtempSync(join(parent, 'out-'));
  const versions = Object.keys(contents);
  const images = versions.map((version, index) => {
    const data = Buffer.from(contents[version]!);
    writeFileSync(join(out, `go-${version}.cpio.gz`), data);
    return manifestEntry(version, index === versions.length - 1, data);
  });
  const path = join(out, 'manifest.json');
  writeFileSync(path, serializeManifest(mergeImages(emptyManifest(), images)));
  return path;
}
