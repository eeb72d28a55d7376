/**
 * The registry artifact contract against a real docker-registry: `publish
 * --registry` prints the pushed manifest's digest, fetching by that digest
 * gives the same manifest and signature bytes (pinning), readers select
 * layers by mediaType whatever their order, and each publish raises the
 * serial over what the tag serves.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { loadVerifyKey, verifySignatures, writeKeyPair } from '../../src/manifest/sign.ts';
import { artifactLayers, type Artifact } from '../../src/publish/registry.ts';
import { runRampack } from '../helpers/cli.ts';
import { writeBuildOutput } from '../helpers/manifests.ts';
import { skopeoRawManifest, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { testDirectory } from '../helpers/temp.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const work = testDirectory('publish-registry');
const key = join(work, 'signing.key');
const pub = join(work, 'signing.pub');
const repository = 'initramfs/go';
let registry: RunningRegistry;
let manifest: string;

interface PublishOutput {
  reference: string;
  pinned: string;
  digest: string;
  serial: number;
  expires: string;
}

function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** GET from the registry's HTTP API directly: an independent reader, not rampack's client. */
async function get(path: string, accept?: string): Promise<Buffer> {
  const response = await fetch(`${registry.url}/v2/${repository}/${path}`, { headers: accept ? { accept } : {} });
  expect(response.status).toBe(200);
  return Buffer.from(await response.arrayBuffer());
}

async function putManifest(tag: string, artifact: object): Promise<void> {
  const response = await fetch(`${registry.url}/v2/${repository}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST },
    body: JSON.stringify(artifact),
  });
  expect(response.status).toBe(201);
}

/** What a runtime reads from the artifact a tag or digest names: layers picked by mediaType, the signature checked. */
async function readArtifact(reference: string) {
  const bytes = await get(`manifests/${reference}`, OCI_MANIFEST);
  const artifact = JSON.parse(bytes.toString()) as Artifact & { layers: NonNullable<Artifact['layers']> };
  const layers = artifactLayers(artifact, reference);
  const manifestBytes = await get(`blobs/${layers.manifest.digest}`);
  const signatureBytes = await get(`blobs/${layers.signature!.digest}`);
  verifySignatures(manifestBytes, signatureBytes.toString(), [await loadVerifyKey(pub)], `manifest of ${reference}`);
  return { bytes, artifact, layers, manifestBytes, signatureBytes, manifest: JSON.parse(manifestBytes.toString()) as Manifest };
}

async function publish(tag: string, ...args: string[]): Promise<PublishOutput> {
  const result = await runRampack(['publish', manifest, '--registry', `${registry.host}/${repository}:${tag}`, '--key', key, ...args]);
  expect(result.stderr).not.toContain('error');
  expect(result.code).toBe(0);
  const output = JSON.parse(result.stdout) as PublishOutput;
  expect(result.stderr).toContain(output.digest);
  return output;
}

beforeAll(async () => {
  registry = await startRegistry();
  await writeKeyPair(key, pub);
  manifest = writeBuildOutput(work, { '1.26': 'go 1.26 initramfs', '1.27': 'go 1.27 initramfs' });
}, 60_000);

afterAll(async () => {
  await registry?.stop();
});

describe('rampack publish --registry', () => {
  let first: PublishOutput;

  it('prints the pushed manifest digest; fetching by that digest returns the same manifest and signature bytes', async () => {
    first = await publish('stable');
    expect(first.digest).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect(first.pinned).toBe(`${registry.host}/${repository}@${first.digest}`);
    expect(first.serial).toBe(1);
    const raw = await skopeoRawManifest(`${registry.host}/${repository}:stable`);
    expect(sha256Digest(raw)).toBe(first.digest);

    const byTag = await readArtifact('stable');
    const byDigest = await readArtifact(first.digest);
    expect(sha256Digest(byDigest.bytes)).toBe(first.digest);
    expect(byDigest.bytes.equals(byTag.bytes)).toBe(true);
    expect(byDigest.manifestBytes.equals(byTag.manifestBytes)).toBe(true);
    expect(byDigest.signatureBytes.equals(byTag.signatureBytes)).toBe(true);
    expect(byDigest.manifest).toMatchObject({ serial: 1, expires: first.expires });
  });

  it('raises the serial on each publish, while the first digest still pins the first manifest', async () => {
    const second = await publish('stable', '--expires', '2d');
    expect(second.serial).toBe(2);
    expect(second.digest).not.toBe(first.digest);
    expect((await readArtifact('stable')).manifest.serial).toBe(2);
    expect((await readArtifact(first.digest)).manifest.serial).toBe(1);
  });

  it('readers select layers by mediaType: the same parts come out when the layer order changes', async () => {
    const original = await readArtifact('stable');
    const reordered = { ...original.artifact, layers: [...original.artifact.layers].reverse() };
    expect(reordered.layers[0]!.mediaType).not.toBe(original.artifact.layers[0]!.mediaType);
    await putManifest('reordered', reordered);

    const read = await readArtifact('reordered');
    expect(read.layers.manifest).toEqual(original.layers.manifest);
    expect(read.manifestBytes.equals(original.manifestBytes)).toBe(true);
    // Each image's file is the blob its signed sha256 names, wherever its layer sits.
    for (const image of read.manifest.images) {
      const layer = read.layers.initramfs.find((candidate) => candidate.digest === `sha256:${image.sha256}`);
      expect(layer?.size).toBe(image.size);
      expect(sha256Digest(await get(`blobs/${layer!.digest}`))).toBe(`sha256:${image.sha256}`);
    }
    // rampack's own reader (the serial of what a tag serves) selects the same way.
    expect((await publish('reordered')).serial).toBe(3);
  });

  it('refuses to publish over a tag that holds something other than a rampack artifact', async () => {
    const { artifact } = await readArtifact('stable');
    await putManifest('other', { ...artifact, artifactType: 'application/vnd.example.thing.v1+json' });
    const result = await runRampack(['publish', manifest, '--registry', `${registry.host}/${repository}:other`, '--key', key]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain('is not a rampack artifact (artifactType application/vnd.example.thing.v1+json');
  });
});
