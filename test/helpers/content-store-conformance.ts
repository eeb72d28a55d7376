/**
 * One conformance check for every ContentStore (src/oci/content.ts), after
 * go-containerregistry's `validate`: whatever a store hands out must be what
 * the digests it was asked for name, and the image it serves must be the
 * expected one. A new content source is done when it passes this check
 * (test/e2e/content-stores.test.ts runs it for every implementation).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { expect } from 'vitest';
import { createDecompressor, detectCompression } from '../../src/compress/index.ts';
import type { Arch, ContentStore } from '../../src/oci/content.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { Descriptor, ImageConfig, ImageIndex, ImageManifest } from '../../src/oci/types.ts';

/** What the store must serve: its canonical reference, and per arch the image's layers by diff_id. */
export interface ExpectedImage {
  reference: string;
  diffIds: Partial<Record<Arch, string[]>>;
}

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

async function fileDigest(path: string): Promise<{ digest: string; size: number }> {
  const bytes = await readFile(path);
  return { digest: sha256(bytes), size: bytes.length };
}

/** sha256 of a layer blob once decompressed: its diff_id. */
async function uncompressedDigest(path: string): Promise<string> {
  const head = Buffer.alloc(8);
  const handle = await open(path);
  await handle.read(head, 0, 8, 0);
  await handle.close();
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), createDecompressor(detectCompression(head)), hash);
  return `sha256:${hash.digest('hex')}`;
}

async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of chunks) parts.push(chunk);
  return Buffer.concat(parts);
}

/** Descriptors that lie about content the store has: each must be refused, never answered. */
function lies(descriptor: Descriptor): Descriptor[] {
  const otherDigest = `sha256:${createHash('sha256').update(descriptor.digest).digest('hex')}`;
  return [
    { ...descriptor, digest: otherDigest },
    { ...descriptor, size: descriptor.size + 1 },
    { ...descriptor, size: Math.max(0, descriptor.size - 1) },
  ];
}

async function checkLayer(store: ContentStore, layer: Descriptor, diffId: string): Promise<void> {
  const path = await store.blobPath(layer);
  expect(await fileDigest(path), `layer ${layer.digest}`).toEqual({ digest: layer.digest, size: layer.size });
  expect(await uncompressedDigest(path), `diff_id of layer ${layer.digest}`).toBe(diffId);
  expect(await store.blobPath(layer), 'blobPath twice').toBe(path);
  const incoming = store.incomingBlob?.(layer);
  if (incoming) {
    expect(sha256(await collect(incoming.follow())), `incoming ${layer.digest}`).toBe(layer.digest);
    expect((await fileDigest(await incoming.path)).digest).toBe(layer.digest);
  }
}

async function checkImageManifest(store: ContentStore, bytes: Buffer, arch: Arch, expected: ExpectedImage): Promise<void> {
  const manifest = JSON.parse(bytes.toString('utf8')) as ImageManifest;
  const configBytes = await store.fetchBlob(manifest.config);
  expect(sha256(configBytes)).toBe(manifest.config.digest);
  expect(configBytes.length).toBe(manifest.config.size);
  for (const lie of lies(manifest.config)) await expect(store.fetchBlob(lie), `config ${JSON.stringify(lie)}`).rejects.toThrow();
  const config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
  expect(config.rootfs.diff_ids).toEqual(expected.diffIds[arch]);
  expect(manifest.layers).toHaveLength(config.rootfs.diff_ids.length);
  for (const [index, layer] of manifest.layers.entries()) await checkLayer(store, layer, config.rootfs.diff_ids[index]!);
}

/** The arch of an index child, as rampack names it; undefined for other platforms (attestations). */
function archOf(descriptor: Descriptor & { platform?: { architecture?: string } }): Arch | undefined {
  return ({ amd64: 'x86_64', arm64: 'aarch64' } as const)[descriptor.platform?.architecture as 'amd64' | 'arm64'];
}

export async function checkContentStore(store: ContentStore, expected: ExpectedImage): Promise<void> {
  expect(store.reference).toBe(expected.reference);
  const root = await store.fetchRootManifest();
  expect(sha256(root.bytes), 'root manifest digest').toBe(root.digest);
  const document = JSON.parse(root.bytes.toString('utf8')) as { manifests?: unknown };
  const arches = Object.keys(expected.diffIds) as Arch[];
  const manifestDigests = new Map<Arch, string>();
  if (Array.isArray(document.manifests)) {
    for (const child of (document as ImageIndex).manifests) {
      const arch = archOf(child);
      if (arch === undefined) continue;
      const fetched = await store.fetchManifest(child);
      expect(sha256(fetched.bytes)).toBe(child.digest);
      expect(fetched.bytes.length).toBe(child.size);
      for (const lie of lies(child)) await expect(store.fetchManifest(lie), `manifest ${JSON.stringify(lie)}`).rejects.toThrow();
      await checkImageManifest(store, fetched.bytes, arch, expected);
      manifestDigests.set(arch, child.digest);
    }
  } else {
    expect(arches).toHaveLength(1);
    await checkImageManifest(store, root.bytes, arches[0]!, expected);
    manifestDigests.set(arches[0]!, root.digest);
  }
  expect([...manifestDigests.keys()].sort()).toEqual([...arches].sort());
  for (const arch of arches) {
    const image = await resolveImage(store, arch);
    expect(image.manifestDigest).toBe(manifestDigests.get(arch));
    expect(image.layers.map((layer) => layer.digest)).toEqual(image.manifest.layers.map((layer) => layer.digest));
    expect(image.config.rootfs.diff_ids).toEqual(expected.diffIds[arch]);
  }
}
