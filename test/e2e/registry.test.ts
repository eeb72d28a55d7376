/**
 * The registry client against real `docker-registry` processes, with images
 * pushed by skopeo (the oracle for manifest digests) and recording proxies in
 * front to count requests, inject failures and redirect blobs to another origin.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache, defaultCacheDir } from '../../src/cache/cache.ts';
import { InputError, RampackError, RegistryError, VerificationError } from '../../src/errors.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { ImageIndex } from '../../src/oci/types.ts';
import { BlobCache } from '../../src/registry/cache.ts';
import { dockerConfigCredentials } from '../../src/registry/credentials.ts';
import { openRegistryStore, type RegistryOptions } from '../../src/registry/store.ts';
import type { Logger } from '../../src/util/log.ts';
import { writeOciLayout, type BuiltBlob, type ImageSpec } from '../helpers/oci-builder.ts';
import {
  pushLayout,
  registryBlobData,
  skopeoRawManifest,
  startProxy,
  startRegistry,
  type RecordingProxy,
  type RunningRegistry,
} from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const USER = 'builder';
const PASSWORD = 's3cret-Pa55word';
const CREDS = `${USER}:${PASSWORD}`;
const BASIC = `Basic ${Buffer.from(CREDS).toString('base64')}`;

let work: string;
let open: RunningRegistry;
let locked: RunningRegistry;
let single: BuiltBlob;
let multi: BuiltBlob;
const running: { stop(): Promise<void> }[] = [];

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

const spec = (architecture: string, marker: string): ImageSpec => ({
  architecture,
  layers: [
    { entries: [{ name: 'etc/', type: 'directory' }, { name: 'etc/os', content: `${architecture} ${marker}\n` }], compression: 'gzip' },
    { entries: [{ name: 'app/run', content: `#!/bin/sh\necho ${marker}\n`, mode: 0o755 }], compression: 'zstd' },
  ],
});

function collectingLogger(lines: string[]): Logger {
  const push = (line: string) => void lines.push(line);
  return { info: push, warn: push, debug: push };
}

function freshCache(): string {
  return mkdtempSync(join(work, 'cache-'));
}

function storeFor(reference: string, options: Partial<RegistryOptions> = {}) {
  // An empty Docker config directory unless a test brings its own: the machine's logins must not leak in.
  const emptyConfig = mkdtempSync(join(work, 'docker-config-'));
  return openRegistryStore(parseImageReference(reference), { cache: new Cache(freshCache()), maxAttempts: 2, dockerConfigDir: emptyConfig, ...options });
}

async function proxy(upstream: string, options?: Parameters<typeof startProxy>[1]): Promise<RecordingProxy> {
  const started = await startProxy(upstream, options);
  running.push(started);
  return started;
}

function blobRequests(recorder: RecordingProxy): string[] {
  return recorder.requests.filter((request) => request.path.includes('/blobs/')).map((request) => request.path);
}

async function caught(promise: Promise<unknown>): Promise<RampackError> {
  const error = await promise.then(
    () => undefined,
    (failure: unknown) => failure,
  );
  expect(error).toBeInstanceOf(RampackError);
  return error as RampackError;
}

function fullText(error: RampackError): string {
  return `${error.message} ${error.hint ?? ''} ${String(error.cause ?? '')} ${JSON.stringify(error)}`;
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.htpasswd, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-registry-test-'));
  [open, locked] = await Promise.all([startRegistry(), startRegistry({ htpasswd: { username: USER, password: PASSWORD } })]);
  single = await writeOciLayout(join(work, 'single'), spec('amd64', 'single'), '1.0');
  multi = await writeOciLayout(join(work, 'multi'), [spec('amd64', 'multi'), spec('arm64', 'multi')], '2.0');
  await Promise.all([
    pushLayout(join(work, 'single'), '1.0', open.host, 'test/app'),
    pushLayout(join(work, 'multi'), '2.0', open.host, 'test/multi', { all: true }),
    pushLayout(join(work, 'single'), '1.0', locked.host, 'private/app', { creds: CREDS }),
  ]);
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  await Promise.all([open?.stop(), locked?.stop()]);
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('resolving images from a registry', () => {
  it('resolves a single-arch image to the manifest skopeo pushed', async () => {
    const raw = await skopeoRawManifest(`${open.host}/test/app:1.0`);
    const image = await resolveImage(storeFor(`${open.host}/test/app:1.0`), 'x86_64');
    expect(image.reference).toBe(`${open.host}/test/app:1.0`);
    expect(image.manifestDigest).toBe(sha256(raw));
    expect(image.manifestDigest).toBe(single.digest);
    expect(image.indexDigest).toBeUndefined();
    expect(image.layers.map((layer) => layer.mediaType)).toEqual([
      'application/vnd.oci.image.layer.v1.tar+gzip',
      'application/vnd.oci.image.layer.v1.tar+zstd',
    ]);
  });

  it('picks each arch from a multi-arch index', async () => {
    const raw = await skopeoRawManifest(`${open.host}/test/multi:2.0`);
    const index = JSON.parse(raw.toString('utf8')) as ImageIndex;
    const digestFor = (architecture: string) => index.manifests.find((entry) => entry.platform?.architecture === architecture)?.digest;
    for (const [arch, oci] of [['x86_64', 'amd64'], ['aarch64', 'arm64']] as const) {
      const image = await resolveImage(storeFor(`${open.host}/test/multi:2.0`), arch);
      expect(image.indexDigest).toBe(sha256(raw));
      expect(image.indexDigest).toBe(multi.digest);
      expect(image.manifestDigest).toBe(digestFor(oci));
      expect(image.config.architecture).toBe(oci);
    }
  });

  it('fetches by digest, which wins over a tag', async () => {
    const byDigest = await resolveImage(storeFor(`${open.host}/test/multi@${multi.digest}`), 'aarch64');
    const tagAndDigest = await resolveImage(storeFor(`${open.host}/test/multi:no-such-tag@${multi.digest}`), 'aarch64');
    expect(byDigest.indexDigest).toBe(multi.digest);
    expect(tagAndDigest.manifestDigest).toBe(byDigest.manifestDigest);
  });

  it('reports an unknown tag or repository as an InputError naming the image', async () => {
    const unknownTag = await caught(storeFor(`${open.host}/test/app:nope`).fetchRootManifest());
    expect(unknownTag).toBeInstanceOf(InputError);
    expect(unknownTag.message).toContain(`image ${open.host}/test/app:nope not found in registry ${open.host}`);
    expect(unknownTag.message).toContain('MANIFEST_UNKNOWN');
    const unknownRepo = await caught(storeFor(`${open.host}/test/nothing:1.0`).fetchRootManifest());
    expect(unknownRepo).toBeInstanceOf(InputError);
    expect(unknownRepo.message).toContain(`image ${open.host}/test/nothing:1.0 not found`);
  });

  it('retries 503 answers, and names registry, image and failure when attempts run out', async () => {
    const flaky = await proxy(open.host, { failFirst: 2 });
    const image = await resolveImage(storeFor(`${flaky.host}/test/app:1.0`, { maxAttempts: 3 }), 'x86_64');
    expect(image.manifestDigest).toBe(single.digest);
    expect(flaky.requests.slice(0, 3).map((request) => request.path)).toEqual(['/v2/', '/v2/', '/v2/']);

    const down = await proxy(open.host, { failFirst: 100 });
    const error = await caught(storeFor(`${down.host}/test/app:1.0`, { maxAttempts: 2 }).fetchRootManifest());
    expect(error).toBeInstanceOf(RegistryError);
    expect(error.message).toContain(`contacting registry ${down.host}`);
    expect(error.message).toContain('HTTP 503');
    expect(error.message).toContain('gave up after 2 attempts');
    expect(down.requests).toHaveLength(2);
  });

  it('fails with a RegistryError when nothing listens', async () => {
    const server = createServer().listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    server.close();
    const error = await caught(storeFor(`127.0.0.1:${port}/test/app:1.0`).fetchRootManifest());
    expect(error).toBeInstanceOf(RegistryError);
    expect(error.message).toContain(`contacting registry 127.0.0.1:${port}`);
    expect(error.message).toContain('ECONNREFUSED');
    expect(error.hint).toContain('check the registry name');
  });
});

describe('downloading layers into the blob cache', () => {
  it('stores verified blobs and serves them again without the network', async () => {
    const recorder = await proxy(open.host);
    const cacheDir = freshCache();
    const reference = `${recorder.host}/test/app:1.0`;
    const image = await resolveImage(storeFor(reference, { cache: new Cache(cacheDir) }), 'x86_64');
    const store = storeFor(reference, { cache: new Cache(cacheDir) });
    const paths = await Promise.all(image.layers.map((layer) => store.blobPath(layer)));
    for (const [index, layer] of image.layers.entries()) {
      expect(paths[index]).toBe(join(cacheDir, 'blobs', 'sha256', layer.digest.slice(7)));
      expect(sha256(readFileSync(paths[index]!))).toBe(layer.digest);
    }
    expect(blobRequests(recorder).filter((path) => !path.endsWith(image.configDigest))).toHaveLength(image.layers.length);
    expect(readdirSync(join(cacheDir, 'blobs', 'sha256')).sort()).toEqual(image.layers.map((layer) => layer.digest.slice(7)).sort());

    const before = recorder.requests.length;
    const again = storeFor(reference, { cache: new Cache(cacheDir) });
    expect(await again.blobPath(image.layers[0]!)).toBe(paths[0]);
    expect(recorder.requests.length).toBe(before);
  });

  it('keeps a corrupt blob out of the cache', async () => {
    const layout = join(work, 'corrupt');
    await writeOciLayout(layout, spec('amd64', 'corrupt-me'), '1.0');
    await pushLayout(layout, '1.0', open.host, 'test/corrupt');
    const image = await resolveImage(storeFor(`${open.host}/test/corrupt:1.0`), 'x86_64');
    const layer = image.layers[0]!;
    const data = registryBlobData(open, layer.digest);
    writeFileSync(data, Buffer.alloc(statSync(data).size, 0x5a));

    const cacheDir = freshCache();
    const error = await caught(storeFor(`${open.host}/test/corrupt:1.0`, { cache: new Cache(cacheDir) }).blobPath(layer));
    expect(error).toBeInstanceOf(VerificationError);
    expect(error.message).toContain(`blob ${layer.digest} does not match its digest`);
    expect(readdirSync(join(cacheDir, 'blobs', 'sha256'))).toEqual([]);
  });

  it('lets concurrent writers of one blob both succeed, leaving one file', async () => {
    const cache = new BlobCache(new Cache(freshCache()));
    const content = Buffer.alloc(256 * 1024, 7);
    const slowly = async function* () {
      for (let offset = 0; offset < content.length; offset += 16 * 1024) {
        yield content.subarray(offset, offset + 16 * 1024);
        await setImmediate();
      }
    };
    const digest = sha256(content);
    const paths = await Promise.all([cache.ingest(digest, content.length, slowly()), cache.ingest(digest, content.length, slowly())]);
    expect(paths).toEqual([cache.path(digest), cache.path(digest)]);
    expect(readdirSync(cache.cache.folder('blobs'))).toEqual([digest.slice(7)]);
    expect(await cache.has(digest, content.length)).toBe(true);
    expect(await cache.has(digest, content.length + 1)).toBe(false);
  });

  it('defaults to $XDG_CACHE_HOME/rampack, else ~/.cache/rampack', () => {
    const saved = process.env.XDG_CACHE_HOME;
    try {
      process.env.XDG_CACHE_HOME = '/var/cache/ci';
      expect(defaultCacheDir()).toBe('/var/cache/ci/rampack');
      process.env.XDG_CACHE_HOME = 'relative/ignored';
      expect(defaultCacheDir()).toBe(join(homedir(), '.cache', 'rampack'));
    } finally {
      if (saved === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = saved;
    }
  });

  it('refuses foreign layers', async () => {
    const foreign = {
      mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
      digest: `sha256:${'c'.repeat(64)}`,
      size: 10,
      urls: ['https://example.com/layer.tar.gz'],
    };
    const error = await caught(storeFor(`${open.host}/test/app:1.0`).blobPath(foreign));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain('is a foreign (non-distributable) layer');
  });
});

describe('authentication', () => {
  const reference = () => `${locked.host}/private/app:1.0`;

  it('uses a user name and password', async () => {
    const image = await resolveImage(storeFor(reference(), { username: USER, password: PASSWORD }), 'x86_64');
    expect(image.manifestDigest).toBe(single.digest);
  });

  it('reads credentials from a Docker config directory', async () => {
    const configDir = mkdtempSync(join(work, 'docker-config-'));
    const auth = Buffer.from(CREDS).toString('base64');
    writeFileSync(join(configDir, 'config.json'), JSON.stringify({ auths: { [`http://${locked.host}`]: { auth } } }));
    const image = await resolveImage(storeFor(reference(), { dockerConfigDir: configDir }), 'x86_64');
    expect(image.manifestDigest).toBe(single.digest);
  });

  it('finds docker.io credentials under the https://index.docker.io/v1/ key', async () => {
    const configDir = mkdtempSync(join(work, 'docker-config-'));
    const auth = Buffer.from('hubuser:hub:pass').toString('base64');
    writeFileSync(join(configDir, 'config.json'), JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth } } }));
    expect(await dockerConfigCredentials(configDir, 'docker.io')).toEqual({ username: 'hubuser', password: 'hub:pass', source: join(configDir, 'config.json') });
    expect(await dockerConfigCredentials(configDir, 'ghcr.io')).toBeUndefined();
  });

  it('explains missing or wrong credentials without revealing the password', async () => {
    const anonymous = await caught(storeFor(reference()).fetchRootManifest());
    expect(anonymous).toBeInstanceOf(RegistryError);
    expect(anonymous.message).toBe(`registry ${locked.host} requires authentication for private/app (HTTP 401), or the repository does not exist`);
    expect(anonymous.hint).toContain(`docker login ${locked.host}`);

    const lines: string[] = [];
    const wrong = await caught(storeFor(reference(), { username: USER, password: `${PASSWORD}-wrong`, log: collectingLogger(lines) }).fetchRootManifest());
    expect(wrong).toBeInstanceOf(RegistryError);
    expect(wrong.message).toContain(`registry ${locked.host} refused access to private/app with the credentials from --username/--password-stdin`);
    expect(fullText(wrong)).not.toContain(PASSWORD);
    expect(lines.join('\n')).not.toContain(PASSWORD);
  });

  it('never sends Authorization to the origin a blob is redirected to', async () => {
    const storage = await proxy(locked.host, { upstreamAuthorization: BASIC });
    const front = await proxy(locked.host, { redirectBlobsTo: storage.url });
    const store = storeFor(`${front.host}/private/app:1.0`, { username: USER, password: PASSWORD });
    const image = await resolveImage(store, 'x86_64');
    const path = await store.blobPath(image.layers[1]!);
    expect(sha256(readFileSync(path))).toBe(image.layers[1]!.digest);
    expect(front.requests.filter((request) => request.path.includes('/manifests/')).every((request) => request.authorization === BASIC)).toBe(true);
    expect(storage.requests.length).toBeGreaterThanOrEqual(2);
    expect(storage.requests.map((request) => request.authorization)).toEqual(storage.requests.map(() => undefined));
  });
});
