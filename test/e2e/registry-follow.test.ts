/**
 * Layers unpacked while they download from a real `docker-registry`, through
 * the fault-injecting proxy: the unpacked layer is the same as from the
 * finished blob file, a connection broken mid-layer resumes with Range inside
 * the same pass, a registry that cannot resume makes the unpacker fall back
 * to the complete file, and a corrupt blob fails as it always did.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { DownloadRestartedError, VerificationError } from '../../src/errors.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { IncomingBlob } from '../../src/oci/content.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import { openRegistryStore, type RegistryOptions } from '../../src/registry/store.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, registryBlobData, startProxy, startRegistry, type FaultRule, type RecordingProxy, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let registry: RunningRegistry;
const running: { stop(): Promise<void> }[] = [];
/** The big layer of `follow/big:1.0`, its diff_id, and the layer unpacked from its finished blob file. */
let layer: Descriptor;
let diffId: string;
let fromFile: { entries: UnpackedLayer['entries']; tar: Buffer };

function storeFor(host: string, repository: string, options: Partial<RegistryOptions> = {}) {
  return openRegistryStore(parseImageReference(`${host}/${repository}:1.0`), {
    cache: new Cache(mkdtempSync(join(work, 'cache-'))),
    dockerConfigDir: mkdtempSync(join(work, 'docker-config-')),
    retryBaseMs: 10,
    proxyEnv: {},
    ...options,
  });
}

async function proxy(faults: FaultRule[]): Promise<RecordingProxy> {
  const started = await startProxy(registry.host, { faults });
  running.push(started);
  return started;
}

const blobGet = (digest: string) => (request: { method: string; path: string }) => request.method === 'GET' && request.path.endsWith(`/blobs/${digest}`);

/** An incoming blob that notes when its first bytes were read, when its download completed, and what its follower threw. */
function watched(incoming: IncomingBlob) {
  const seen = { bytes: 0, firstBytesAt: Infinity, completeAt: Infinity, errors: [] as unknown[] };
  void incoming.path.then(() => (seen.completeAt = performance.now()));
  const blob: IncomingBlob = {
    path: incoming.path,
    async *follow() {
      try {
        for await (const chunk of incoming.follow()) {
          seen.firstBytesAt = Math.min(seen.firstBytesAt, performance.now());
          seen.bytes += chunk.length;
          yield chunk;
        }
      } catch (error) {
        seen.errors.push(error);
        throw error;
      }
    },
  };
  return { blob, seen };
}

function unpack(blob: IncomingBlob | string, descriptor = layer, cacheDir = mkdtempSync(join(work, 'layers-'))): Promise<UnpackedLayer> {
  return unpackLayer({ blob, descriptor, diffId, cache: new Cache(cacheDir) });
}

function expectSameAsFromFile(unpacked: UnpackedLayer): void {
  expect(unpacked.entries).toEqual(fromFile.entries);
  expect(readFileSync(unpacked.tarPath).equals(fromFile.tar)).toBe(true);
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-registry-follow-'));
  registry = await startRegistry();
  running.push(registry);
  // Incompressible, so the blob is big enough that half of it spans several reads.
  const entries = [{ name: 'data/', type: 'directory' as const }, { name: 'data/random', content: randomBytes(6 * 1024 * 1024) }, { name: 'data/note', content: 'after the big file\n' }];
  await writeOciLayout(join(work, 'big'), { architecture: 'amd64', layers: [{ entries, compression: 'gzip' }] }, '1.0');
  await pushLayout(join(work, 'big'), '1.0', registry.host, 'follow/big');
  const store = storeFor(registry.host, 'follow/big');
  const image = await resolveImage(store, 'x86_64');
  [layer, diffId] = [image.layers[0]!, image.config.rootfs.diff_ids[0]!];
  const unpacked = await unpack(await store.blobPath(layer));
  fromFile = { entries: unpacked.entries, tar: readFileSync(unpacked.tarPath) };
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('unpacking a layer while it downloads', () => {
  it('gives the same layer as unpacking its finished blob file', async () => {
    const { blob, seen } = watched(storeFor(registry.host, 'follow/big').incomingBlob(layer));
    expectSameAsFromFile(await unpack(blob));
    expect(seen.errors).toEqual([]);
    expect(seen.bytes).toBe(layer.size);
  });

  it('goes on in the same pass when a broken connection resumes with Range', async () => {
    const faulty = await proxy([{ when: blobGet(layer.digest), fault: { kind: 'reset' }, times: 1 }]);
    const { blob, seen } = watched(storeFor(faulty.host, 'follow/big').incomingBlob(layer));
    expectSameAsFromFile(await unpack(blob));
    const gets = faulty.requests.filter(blobGet(layer.digest));
    expect(gets).toHaveLength(2);
    expect(gets[1]!.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(seen.errors).toEqual([]);
    expect(seen.bytes).toBe(layer.size);
    expect(seen.firstBytesAt).toBeLessThan(seen.completeAt);
  });

  it('falls back to the complete file when the registry cannot resume and starts over', async () => {
    const faulty = await proxy([
      { when: blobGet(layer.digest), fault: { kind: 'reset' }, times: 1 },
      { when: blobGet(layer.digest), fault: { kind: 'ignore-range' }, times: 1 },
    ]);
    const { blob, seen } = watched(storeFor(faulty.host, 'follow/big').incomingBlob(layer));
    expectSameAsFromFile(await unpack(blob));
    expect(faulty.injected.map((fault) => fault.fault)).toEqual(['reset', 'ignore-range']);
    expect(seen.errors).toHaveLength(1);
    expect(seen.errors[0]).toBeInstanceOf(DownloadRestartedError);
  });

  it('fails on a corrupt blob with the same error as its download, caching nothing', async () => {
    await writeOciLayout(join(work, 'corrupt'), { architecture: 'amd64', layers: [{ entries: [{ name: 'etc/os', content: 'corrupt me\n' }], compression: 'gzip' }] }, '1.0');
    await pushLayout(join(work, 'corrupt'), '1.0', registry.host, 'follow/corrupt');
    const store = storeFor(registry.host, 'follow/corrupt');
    const image = await resolveImage(store, 'x86_64');
    const corrupt = image.layers[0]!;
    const data = registryBlobData(registry, corrupt.digest);
    writeFileSync(data, Buffer.alloc(statSync(data).size, 0x5a));

    const cacheDir = mkdtempSync(join(work, 'layers-'));
    const error = await unpack(store.incomingBlob(corrupt), corrupt, cacheDir).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain(`blob ${corrupt.digest} does not match its digest`);
    expect(readdirSync(join(cacheDir, 'layers', 'sha256'))).toEqual([]);
  });
});
