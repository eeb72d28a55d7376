/**
 * Real registries for tests: Debian's `docker-registry` on a loopback port
 * with its own config, skopeo to push OCI layouts into it (the oracle until
 * rampack pushes by itself), and a recording HTTP proxy to see what a client
 * sends.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { ensureTools, TOOLS } from './system.ts';

const run = promisify(execFile);
const STARTUP_TIMEOUT_MS = 20_000;

export interface RunningRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT" */
  url: string;
  /** The registry's storage root (blobs live under docker/registry/v2/blobs). */
  root: string;
  stop(): Promise<void>;
}

export interface RegistryAuthOptions {
  /** Basic authentication against a bcrypt htpasswd file. */
  htpasswd?: { username: string; password: string };
  /** Bearer challenges pointing at this realm (the registry's "silly" auth accepts any Authorization). */
  tokenRealm?: { realm: string; service: string };
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

async function authConfig(dir: string, options: RegistryAuthOptions): Promise<object | undefined> {
  if (options.htpasswd) {
    const { username, password } = options.htpasswd;
    const { stdout } = await run('htpasswd', ['-Bbn', username, password]);
    const path = join(dir, 'htpasswd');
    await writeFile(path, stdout);
    return { htpasswd: { realm: 'rampack-test', path } };
  }
  if (options.tokenRealm) return { silly: options.tokenRealm };
  return undefined;
}

async function waitForRegistry(url: string, exited: Promise<void>, stderr: () => string): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  let gone = false;
  void exited.then(() => (gone = true));
  while (Date.now() < deadline && !gone) {
    const status = await fetch(`${url}/v2/`).then((response) => response.status, () => 0);
    if (status === 200 || status === 401) return;
    await sleep(100);
  }
  throw new Error(`docker-registry did not come up at ${url}: ${stderr()}`);
}

/** Starts `docker-registry serve` on a free loopback port with storage in a temporary directory. */
export async function startRegistry(options: RegistryAuthOptions = {}): Promise<RunningRegistry> {
  ensureTools(TOOLS.registry, TOOLS.htpasswd);
  const dir = await mkdtemp(join(tmpdir(), 'rampack-registry-'));
  const root = join(dir, 'storage');
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const config = {
    version: 0.1,
    log: { level: 'warn', accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: root }, delete: { enabled: true } },
    http: { addr: host },
    auth: await authConfig(dir, options),
  };
  const configPath = join(dir, 'config.yml');
  await writeFile(configPath, stringify(config));
  const child = spawn('docker-registry', ['serve', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', (error) => {
      stderr += error.message;
      resolve();
    });
  });
  const url = `http://${host}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitForRegistry(url, exited, () => stderr);
  } catch (error) {
    await stop();
    throw error;
  }
  return { host, url, root, stop };
}

/** Where the registry stores a blob's bytes on disk. */
export function registryBlobData(registry: RunningRegistry, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(registry.root, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

/** Pushes `oci:layoutDir:tag` to HOST/REPO:TAG with skopeo (`all`: every image of an index). */
export async function pushLayout(
  layoutDir: string,
  tag: string,
  registryHost: string,
  repo: string,
  options: { all?: boolean; creds?: string } = {},
): Promise<void> {
  ensureTools(TOOLS.skopeo);
  const args = ['copy', '--quiet', '--insecure-policy', '--dest-tls-verify=false'];
  if (options.all) args.push('--all');
  if (options.creds) args.push('--dest-creds', options.creds);
  await run('skopeo', [...args, `oci:${layoutDir}:${tag}`, `docker://${registryHost}/${repo}:${tag}`]);
}

/** The manifest bytes skopeo reads for `HOST/REPO:TAG`. */
export async function skopeoRawManifest(reference: string, creds?: string): Promise<Buffer> {
  ensureTools(TOOLS.skopeo);
  const args = ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${reference}`];
  const { stdout } = await run('skopeo', args, { encoding: 'buffer' });
  return stdout;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  authorization?: string;
}

export interface ProxyOptions {
  /** Answer blob GETs with a 307 to the same path on this origin (like a redirect to object storage). */
  redirectBlobsTo?: string;
  /** Authorization to send upstream instead of the client's (for a redirect target that signs its own requests). */
  upstreamAuthorization?: string;
  /** Answer this many requests with 503 and `Retry-After: 0` before proxying. */
  failFirst?: number;
}

export interface RecordingProxy {
  host: string;
  url: string;
  /** Every request received, in order. */
  requests: ProxiedRequest[];
  /** From now on forward requests carrying this Authorization without it, so the registry challenges them. */
  revoke(authorization: string): void;
  stop(): Promise<void>;
}

function forward(upstream: string, request: IncomingMessage, response: ServerResponse, authorization: string | undefined): void {
  const headers = { ...request.headers, host: upstream };
  delete headers.authorization;
  if (authorization) headers.authorization = authorization;
  const [hostname, port] = upstream.split(':');
  const outgoing = httpRequest({ hostname, port, method: request.method, path: request.url, headers }, (answer) => {
    response.writeHead(answer.statusCode ?? 502, answer.headers);
    answer.pipe(response);
  });
  outgoing.on('error', () => response.destroy());
  request.pipe(outgoing);
}

/** An HTTP proxy in front of `upstream` ("127.0.0.1:PORT") that records each request. */
export async function startProxy(upstream: string, options: ProxyOptions = {}): Promise<RecordingProxy> {
  const requests: ProxiedRequest[] = [];
  let failures = options.failFirst ?? 0;
  const revoked = new Set<string>();
  const server: Server = createServer((request, response) => {
    const path = request.url ?? '/';
    requests.push({ method: request.method ?? '', path, authorization: request.headers.authorization });
    if (failures > 0) {
      failures--;
      response.writeHead(503, { 'retry-after': '0' }).end('try again');
    } else if (options.redirectBlobsTo && path.includes('/blobs/sha256:')) {
      response.writeHead(307, { location: `${options.redirectBlobsTo}${path}` }).end();
    } else {
      const authorization = request.headers.authorization;
      forward(upstream, request, response, options.upstreamAuthorization ?? (revoked.has(authorization ?? '') ? undefined : authorization));
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const stop = async () => {
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  };
  return { host, url: `http://${host}`, requests, revoke: (authorization) => revoked.add(authorization), stop };
}
