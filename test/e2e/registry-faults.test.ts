/**
 * Transfers over a bad network: a fault-injecting proxy between rampack and a
 * real `docker-registry` resets connections mid-blob, truncates bodies,
 * answers 500/503/429, and stalls. Downloads must resume or start over,
 * retries must stay bounded, and the blob cache must never hold a bad blob;
 * a whole `rampack build` must produce the very same initramfs as without
 * faults, or fail with exit code 4.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { RampackError, RegistryError } from '../../src/errors.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { openRegistryStore, type RegistryOptions } from '../../src/registry/store.ts';
import { REQUESTS_PER_REGISTRY } from '../../src/registry/transport.ts';
import type { Logger } from '../../src/util/log.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout, type ImageSpec } from '../helpers/oci-builder.ts';
import { pushLayout, startProxy, startRegistry, type FaultRule, type ProxyOptions, type RecordingProxy, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const REFERENCE = 'lang/runtime:1.0';

let work: string;
let registry: RunningRegistry;
let agent: string;
const running: { stop(): Promise<void> }[] = [];

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

async function proxy(options: ProxyOptions = {}): Promise<RecordingProxy> {
  const started = await startProxy(registry.host, options);
  running.push(started);
  return started;
}

function storeFor(host: string, options: Partial<RegistryOptions> = {}) {
  return openRegistryStore(parseImageReference(`${host}/${REFERENCE}`), {
    cache: new Cache(mkdtempSync(join(work, 'cache-'))),
    dockerConfigDir: mkdtempSync(join(work, 'docker-config-')),
    retryBaseMs: 10,
    proxyEnv: {},
    ...options,
  });
}

/** The layers of the language image, biggest (the busybox base) first. */
async function layers(): Promise<Descriptor[]> {
  const image = await resolveImage(storeFor(registry.host), 'x86_64');
  return [...image.layers].sort((a, b) => b.size - a.size);
}

const blobGet = (digest: string) => (request: { method: string; path: string }) => request.method === 'GET' && request.path.endsWith(`/blobs/${digest}`);

/** Every file in the cache's blob store is named after its own sha256, and nothing half-written is left. */
function expectCacheSound(cacheDir: string): string[] {
  const dir = join(cacheDir, 'blobs', 'sha256');
  const names = existsSync(dir) ? readdirSync(dir) : [];
  for (const name of names) expect(sha256(readFileSync(join(dir, name)))).toBe(name);
  return names;
}

function collectingLogger(lines: string[]): Logger {
  const push = (line: string) => void lines.push(line);
  return { info: push, warn: push, debug: push };
}

async function caught(promise: Promise<unknown>): Promise<RampackError> {
  const error = await promise.then(() => undefined, (failure: unknown) => failure);
  expect(error).toBeInstanceOf(RampackError);
  return error as RampackError;
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.musl);
  work = mkdtempSync(join(tmpdir(), 'rampack-registry-faults-'));
  [registry, agent] = await Promise.all([startRegistry(), buildTestAgent('x86_64')]);
  running.push(registry);
  await writeOciLayout(join(work, 'layout'), languageImageSpec(), '1.0');
  await pushLayout(join(work, 'layout'), '1.0', registry.host, 'lang/runtime');
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('downloading a layer over a bad connection', () => {
  for (const kind of ['reset', 'truncate'] as const) {
    it(`resumes with Range after a ${kind} mid-blob`, async () => {
      const [base] = await layers();
      const faulty = await proxy({ faults: [{ when: blobGet(base!.digest), fault: { kind }, times: 1 }] });
      const path = await storeFor(faulty.host).blobPath(base!);
      expect(`sha256:${sha256(readFileSync(path))}`).toBe(base!.digest);
      const gets = faulty.requests.filter(blobGet(base!.digest));
      expect(gets).toHaveLength(2);
      expect(gets[0]!.range).toBeUndefined();
      const offset = Number(gets[1]!.range?.match(/^bytes=(\d+)-$/)?.[1]);
      expect(offset).toBeGreaterThan(0);
      expect(offset).toBeLessThan(base!.size);
    });
  }

  it('starts over when the registry answers a Range request with the whole blob', async () => {
    const [base] = await layers();
    const faults: FaultRule[] = [
      { when: blobGet(base!.digest), fault: { kind: 'reset' }, times: 1 },
      { when: blobGet(base!.digest), fault: { kind: 'ignore-range' }, times: 1 },
    ];
    const faulty = await proxy({ faults });
    const lines: string[] = [];
    let downloaded = 0;
    const onBlobBytes = (_digest: string, bytes: number) => (downloaded += bytes);
    const path = await storeFor(faulty.host, { log: collectingLogger(lines), onBlobBytes }).blobPath(base!);
    expect(`sha256:${sha256(readFileSync(path))}`).toBe(base!.digest);
    expect(faulty.injected.map((fault) => fault.fault)).toEqual(['reset', 'ignore-range']);
    expect(lines.join('\n')).toContain('cannot resume at byte');
    // Progress never passes the blob's size: the bytes thrown away are taken back.
    expect(downloaded).toBe(base!.size);
  });

  it('retries 500, 503 and 429, waiting as long as Retry-After says', async () => {
    const [base] = await layers();
    const faults: FaultRule[] = [
      { when: (request) => request.path === '/v2/', fault: { kind: 'status', status: 500 }, times: 1 },
      { when: (request) => request.path.includes('/manifests/'), fault: { kind: 'status', status: 503 }, times: 1 },
      { when: blobGet(base!.digest), fault: { kind: 'status', status: 429, retryAfter: '1' }, times: 1 },
    ];
    const faulty = await proxy({ faults });
    const store = storeFor(faulty.host);
    const image = await resolveImage(store, 'x86_64');
    const started = Date.now();
    await store.blobPath(image.layers.find((layer) => layer.digest === base!.digest)!);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(faulty.injected.map((fault) => fault.fault)).toEqual(['status', 'status', 'status']);
  });

  it('aborts a transfer that stalls, before or after the headers, and retries', async () => {
    const [base] = await layers();
    const faults: FaultRule[] = [
      { when: (request) => request.path.includes('/manifests/'), fault: { kind: 'stall-headers' }, times: 1 },
      { when: blobGet(base!.digest), fault: { kind: 'stall' }, times: 1 },
    ];
    const faulty = await proxy({ faults });
    const store = storeFor(faulty.host, { stallTimeoutMs: 300 });
    const image = await resolveImage(store, 'x86_64');
    const path = await store.blobPath(image.layers.find((layer) => layer.digest === base!.digest)!);
    expect(`sha256:${sha256(readFileSync(path))}`).toBe(base!.digest);
    expect(faulty.injected.map((fault) => fault.fault)).toEqual(['stall-headers', 'stall']);
    expect(faulty.requests.filter(blobGet(base!.digest))[1]!.range).toMatch(/^bytes=\d+-$/);
  });

  it('gives up after its attempts with a RegistryError, and caches nothing of the blob', async () => {
    const [base] = await layers();
    const faulty = await proxy({ faults: [{ when: blobGet(base!.digest), fault: { kind: 'reset' }, times: 1000 }] });
    const cacheDir = mkdtempSync(join(work, 'cache-'));
    const error = await caught(storeFor(faulty.host, { cache: new Cache(cacheDir), maxAttempts: 3 }).blobPath(base!));
    expect(error).toBeInstanceOf(RegistryError);
    expect(error.message).toContain(`downloading layer ${base!.digest}`);
    expect(error.message).toContain('gave up after 3 attempts');
    expect(faulty.requests.filter(blobGet(base!.digest))).toHaveLength(3);
    expect(expectCacheSound(cacheDir)).toEqual([]);
    expect(readdirSync(join(cacheDir, 'blobs', 'sha256'))).toEqual([]);
  });

  it('gives up when the retry time is spent, whatever the attempts left', async () => {
    const [base] = await layers();
    const faulty = await proxy({ faults: [{ when: blobGet(base!.digest), fault: { kind: 'status', status: 503 }, times: 1000 }] });
    const error = await caught(storeFor(faulty.host, { maxAttempts: 100, retryBaseMs: 100, maxRetryTimeMs: 500 }).blobPath(base!));
    expect(error.message).toContain('the retry time is up');
    expect(faulty.requests.filter(blobGet(base!.digest)).length).toBeLessThan(6);
  });
});

describe('concurrency', () => {
  it(`keeps at most ${REQUESTS_PER_REGISTRY} requests in flight per registry, across stores`, async () => {
    const spec: ImageSpec = {
      architecture: 'amd64',
      layers: Array.from({ length: 10 }, (_, index) => ({ entries: [{ name: `layer-${index}`, content: `layer ${index}\n` }], compression: 'gzip' as const })),
    };
    await writeOciLayout(join(work, 'many'), spec, '1.0');
    await pushLayout(join(work, 'many'), '1.0', registry.host, 'test/many');
    const slow = await proxy({ faults: [{ when: (request) => request.path.includes('/blobs/'), fault: { kind: 'delay', ms: 150 }, times: 1000 }] });
    const open = () => openRegistryStore(parseImageReference(`${slow.host}/test/many:1.0`), { cache: new Cache(mkdtempSync(join(work, 'cache-'))), proxyEnv: {} });
    const image = await resolveImage(open(), 'x86_64');
    const stores = [open(), open()];
    await Promise.all(stores.flatMap((store) => image.layers.map((layer) => store.blobPath(layer))));
    expect(slow.maxInFlight()).toBe(REQUESTS_PER_REGISTRY);
  });
});

describe("Docker Hub's rate limit headers", () => {
  it('warns once when few pulls are left, and not before', async () => {
    const announce = async (remaining: number) => {
      const limited = await proxy({ responseHeaders: { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': `${remaining};w=21600` } });
      const lines: string[] = [];
      await resolveImage(storeFor(limited.host, { log: { info: () => {}, debug: () => {}, warn: (line) => void lines.push(line) } }), 'x86_64');
      return lines;
    };
    expect(await announce(7)).toEqual([expect.stringMatching(/allows 7 more pulls of its 100 per window/)]);
    expect(await announce(50)).toEqual([]);
  });
});

describe('a whole build over a bad network', () => {
  function build(host: string, cacheDir: string) {
    const out = mkdtempSync(join(work, 'out-'));
    const args = ['build', '--image', `${host}/${REFERENCE}`, '--agent', agent, '--out', out, '--cache', cacheDir, '--verbose'];
    const env = { DOCKER_CONFIG: mkdtempSync(join(work, 'docker-config-')), RAMPACK_RETRY_BASE_MS: '10', RAMPACK_STALL_TIMEOUT_MS: '1000', SOURCE_DATE_EPOCH: '1700000000' };
    return runRampack(args, { env }).then((result) => ({ ...result, out }));
  }

  function initramfsSha(out: string): string {
    const files = readdirSync(out).filter((name) => name.endsWith('.cpio.gz'));
    expect(files).toHaveLength(1);
    return sha256(readFileSync(join(out, files[0]!)));
  }

  it('makes the same initramfs through resets, truncations, 5xx, 429 and stalls', async () => {
    const [base, second, third] = await layers();
    const faults: FaultRule[] = [
      { when: (request) => request.path === '/v2/', fault: { kind: 'status', status: 500 }, times: 1 },
      { when: (request) => request.path.includes('/manifests/'), fault: { kind: 'status', status: 503, retryAfter: '0' }, times: 1 },
      { when: blobGet(base!.digest), fault: { kind: 'reset' }, times: 1 },
      { when: blobGet(base!.digest), fault: { kind: 'truncate' }, times: 1 },
      { when: blobGet(second!.digest), fault: { kind: 'status', status: 429, retryAfter: '0' }, times: 1 },
      { when: blobGet(third!.digest), fault: { kind: 'stall-headers' }, times: 1 },
    ];
    const faulty = await proxy({ faults });
    const faultyCache = mkdtempSync(join(work, 'cli-cache-'));
    const broken = await build(faulty.host, faultyCache);
    expect(broken.code).toBe(0);
    expect(faulty.injected.map((fault) => fault.fault).sort()).toEqual(['reset', 'stall-headers', 'status', 'status', 'status', 'truncate']);
    expect(expectCacheSound(faultyCache).length).toBeGreaterThanOrEqual(3);

    // The same proxy, its faults spent: the reference (and so image.json) is the same.
    const clean = await build(faulty.host, mkdtempSync(join(work, 'cli-cache-')));
    expect(clean.code).toBe(0);
    expect(initramfsSha(broken.out)).toBe(initramfsSha(clean.out));
  });

  it('fails with exit code 4 when a layer never comes through, and caches no bad blob', async () => {
    const [base] = await layers();
    const faulty = await proxy({ faults: [{ when: blobGet(base!.digest), fault: { kind: 'truncate' }, times: 1000 }] });
    const cacheDir = mkdtempSync(join(work, 'cli-cache-'));
    const result = await build(faulty.host, cacheDir);
    expect(result.code).toBe(4);
    expect(result.stderr).toContain(`downloading layer ${base!.digest}`);
    expect(result.stderr).toContain('gave up after 5 attempts');
    expect(expectCacheSound(cacheDir)).not.toContain(base!.digest.slice(7));
  });
});
