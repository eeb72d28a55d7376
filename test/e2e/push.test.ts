/**
 * rampack's push against real `docker-registry` processes (open, htpasswd,
 * and Bearer tokens), read back by skopeo. A recording proxy in front counts
 * the requests and hands the client relative upload Locations.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/errors.ts';
import { OciLayoutStore } from '../../src/sources/oci-layout.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import { copyImage, openRegistryPusher, type PushOptions } from '../../src/registry/push.ts';
import { writeOciLayout, type BuiltBlob } from '../helpers/oci-builder.ts';
import { skopeoRawManifest, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const USER = 'pusher';
const PASSWORD = 'pu5h-Secret';
const CHUNK = 64 * 1024;

interface Recorded {
  method: string;
  path: string;
  contentRange?: string;
}

interface RelativizingProxy {
  host: string;
  requests: Recorded[];
}

let work: string;
let layout: string;
let top: BuiltBlob;
/** The uncompressed layer larger than a chunk. */
let bigLayerSize: number;
let open: RunningRegistry;
let locked: RunningRegistry;
const running: { stop(): Promise<void> }[] = [];

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  running.push({
    stop: async () => {
      server.closeAllConnections();
      server.close();
    },
  });
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Forwards to `upstream`, records each request, and turns absolute Locations into paths. */
async function relativizingProxy(upstream: string): Promise<RelativizingProxy> {
  const requests: Recorded[] = [];
  const server = createServer((incoming, answer) => {
    requests.push({ method: incoming.method!, path: incoming.url!, contentRange: incoming.headers['content-range'] });
    const [hostname, port] = upstream.split(':');
    const outgoing = httpRequest({ hostname, port, method: incoming.method, path: incoming.url, headers: incoming.headers }, (response) => {
      const headers = { ...response.headers };
      if (headers.location) headers.location = headers.location.replace(/^https?:\/\/[^/]+/, '');
      answer.writeHead(response.statusCode ?? 502, headers);
      response.pipe(answer);
    });
    outgoing.on('error', () => answer.destroy());
    incoming.pipe(outgoing);
  });
  return { host: await listen(server), requests };
}

function pushOptions(options: Partial<PushOptions> = {}): PushOptions {
  return { dockerConfigDir: mkdtempSync(join(work, 'docker-config-')), maxAttempts: 2, chunkSize: CHUNK, ...options };
}

function pusherFor(reference: string, options: Partial<PushOptions> = {}) {
  return openRegistryPusher(parseImageReference(reference), pushOptions(options));
}

/** `skopeo copy --all` of a pushed image into a fresh OCI layout; returns its blob names. */
function pullBack(reference: string, creds?: string): string[] {
  const dir = join(mkdtempSync(join(work, 'pulled-')), 'layout');
  execFileSync('skopeo', [
    'copy', '--quiet', '--all', '--preserve-digests', '--insecure-policy', '--src-tls-verify=false', ...(creds ? ['--src-creds', creds] : []),
    `docker://${reference}`, `oci:${dir}:pulled`,
  ]);
  return readdirSync(join(dir, 'blobs', 'sha256')).sort();
}

/** The image manifest of the layout's index entry `index`. */
function manifestOf(index: number) {
  const blob = (digest: string) => JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', digest.slice(7)), 'utf8'));
  return blob(blob(top.digest).manifests[index].digest);
}

function uploadRequests(proxy: RelativizingProxy): Recorded[] {
  return proxy.requests.filter((request) => request.path.includes('/blobs/uploads/'));
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.htpasswd, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-push-test-'));
  layout = join(work, 'layout');
  const big = randomBytes(5 * CHUNK + 123);
  top = await writeOciLayout(layout, [
    { architecture: 'amd64', layers: [{ entries: [{ name: 'big.bin', content: big }], compression: 'none' }, { entries: [{ name: 'etc/a', content: 'a\n' }] }] },
    { architecture: 'arm64', layers: [{ entries: [{ name: 'etc/b', content: 'b\n' }], compression: 'zstd' }] },
  ], '1.0');
  bigLayerSize = manifestOf(0).layers[0].size;
  [open, locked] = await Promise.all([startRegistry(), startRegistry({ htpasswd: { username: USER, password: PASSWORD } })]);
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  await Promise.all([open?.stop(), locked?.stop()]);
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('pushing to an open registry', () => {
  let proxy: RelativizingProxy;

  beforeAll(async () => {
    proxy = await relativizingProxy(open.host);
  });

  it('pushes an index with its images that skopeo reads back byte for byte', async () => {
    const digest = await copyImage(new OciLayoutStore({ dir: layout, tag: '1.0' }), pusherFor(`${proxy.host}/test/pushed`), '1.0');
    expect(digest).toBe(top.digest);
    expect(sha256(await skopeoRawManifest(`${open.host}/test/pushed:1.0`))).toBe(top.digest);
    // skopeo copies every blob it reads; the layout it writes holds exactly ours (and its own index.json outside blobs/).
    expect(pullBack(`${open.host}/test/pushed:1.0`)).toEqual(readdirSync(join(layout, 'blobs', 'sha256')).sort());
  });

  it('uploads a large blob in PATCH chunks with Content-Range, each at the newest Location', () => {
    const patches = proxy.requests.filter((request) => request.method === 'PATCH');
    const ranges: string[] = [];
    for (let start = 0; start < bigLayerSize; start += CHUNK) ranges.push(`${start}-${Math.min(start + CHUNK, bigLayerSize) - 1}`);
    expect(ranges).toHaveLength(6);
    expect(patches.map((request) => request.contentRange)).toEqual(ranges);
    // Each upload URL carries the registry's state in its query: every PATCH went to a new one.
    expect(new Set(patches.map((request) => request.path)).size).toBe(patches.length);
    const closing = proxy.requests.filter((request) => request.method === 'PUT' && request.path.includes('/blobs/uploads/'));
    expect(closing.every((request) => /[?&]_state=.*&digest=sha256%3A[0-9a-f]{64}$/.test(request.path))).toBe(true);
  });

  it('skips blobs the repository has, after one HEAD each', async () => {
    const before = proxy.requests.length;
    await copyImage(new OciLayoutStore({ dir: layout, tag: '1.0' }), pusherFor(`${proxy.host}/test/pushed`), '1.0');
    const again = proxy.requests.slice(before);
    expect(again.filter((request) => request.path.includes('/blobs/uploads/'))).toEqual([]);
    expect(again.filter((request) => request.method === 'HEAD').length).toBe(readdirSync(join(layout, 'blobs', 'sha256')).length - 3);
  });

  it('mounts blobs from another repository instead of uploading them', async () => {
    const before = uploadRequests(proxy).length;
    const pusher = pusherFor(`${proxy.host}/test/mounted`);
    const layer = manifestOf(1).layers[0];
    const content = { path: join(layout, 'blobs', 'sha256', layer.digest.slice(7)) };
    expect(await pusher.pushBlob(layer, content, { mountFrom: 'test/pushed' })).toBe('mounted');
    expect(await pusher.pushBlob(layer, content, { mountFrom: 'test/pushed' })).toBe('present');
    const mounts = uploadRequests(proxy).slice(before);
    expect(mounts).toEqual([{ method: 'POST', path: `/v2/test/mounted/blobs/uploads/?mount=${encodeURIComponent(layer.digest)}&from=test%2Fpushed` }]);
  });

  it('reports content that does not match its digest as the registry refusing it', async () => {
    const bytes = Buffer.from('not what the digest says');
    const descriptor = { mediaType: 'application/octet-stream', digest: sha256(Buffer.from('something else')), size: bytes.length };
    const error = await pusherFor(`${open.host}/test/wrong`).pushBlob(descriptor, { bytes }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(RegistryError);
    expect((error as RegistryError).message).toContain('DIGEST_INVALID');
  });
});

describe('pushing with credentials', () => {
  it('pushes to an htpasswd registry with the given credentials, and is refused without', async () => {
    const store = new OciLayoutStore({ dir: layout, tag: '1.0' });
    await copyImage(store, pusherFor(`${locked.host}/private/app`, { username: USER, password: PASSWORD }), '1.0');
    expect(sha256(await skopeoRawManifest(`${locked.host}/private/app:1.0`, `${USER}:${PASSWORD}`))).toBe(top.digest);
    expect(pullBack(`${locked.host}/private/app:1.0`, `${USER}:${PASSWORD}`)).toHaveLength(readdirSync(join(layout, 'blobs', 'sha256')).length);

    const refused = await copyImage(store, pusherFor(`${locked.host}/private/other`), '1.0').catch((caught: unknown) => caught);
    expect(refused).toBeInstanceOf(RegistryError);
    expect((refused as RegistryError).message).toContain('requires authentication');
  });

  // docker-registry's "silly" auth accepts any token, so this shows the Bearer flow, not the scope checks.
  it('pushes through Bearer challenges with a token from the realm', async () => {
    const scopes: string[] = [];
    const tokens = createServer((request, response) => {
      scopes.push(...new URL(request.url!, 'http://token').searchParams.getAll('scope'));
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'opaque', expires_in: 300 }));
    });
    const realm = `http://${await listen(tokens)}/token`;
    const bearer = await startRegistry({ tokenRealm: { realm, service: 'rampack-test' } });
    running.push(bearer);
    await copyImage(new OciLayoutStore({ dir: layout, tag: '1.0' }), pusherFor(`${bearer.host}/team/app`), '1.0');
    expect(scopes.length).toBeGreaterThan(0);
    expect(scopes.every((scope) => scope.startsWith('repository:team/app:'))).toBe(true);
    expect(sha256(await skopeoRawManifest(`${bearer.host}/team/app:1.0`, 'any:thing'))).toBe(top.digest);
  });
});
