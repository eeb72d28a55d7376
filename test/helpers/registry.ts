/**
 * Real registries for tests: Debian's `docker-registry` on a loopback port
 * with its own config (open, htpasswd, token auth, TLS), skopeo to push OCI
 * layouts into it (the oracle until rampack pushes by itself), a recording
 * HTTP proxy to see what a client sends, a fault-injecting one to break
 * transfers on purpose, and a forward proxy (absolute URIs and CONNECT) for
 * HTTP_PROXY/HTTPS_PROXY.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { get as httpsGet } from 'node:https';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { ensureTools, TOOLS } from './system.ts';

const run = promisify(execFile);
const STARTUP_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;
/** skopeo retries a registry that stops answering: killed after this, so a test never waits on it for ever. */
const SKOPEO_BOUNDS = { timeout: 180_000, killSignal: 'SIGKILL' } as const;

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
  /** Real token auth: the registry verifies JWTs signed by a key whose certificate is in `rootCertBundle`. */
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
  /** Serve HTTPS with this PEM certificate and key. */
  tls?: { certificate: string; key: string };
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
  if (options.token) {
    const { realm, service, issuer, rootCertBundle } = options.token;
    return { token: { realm, service, issuer, rootcertbundle: rootCertBundle } };
  }
  return undefined;
}

/** The status of GET /v2/, 0 when nothing answers (TLS unverified: this only waits for the server). */
function pingStatus(url: string): Promise<number> {
  if (!url.startsWith('https:')) return fetch(`${url}/v2/`).then((response) => response.status, () => 0);
  return new Promise((resolve) => {
    httpsGet(`${url}/v2/`, { rejectUnauthorized: false }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    }).on('error', () => resolve(0));
  });
}

async function waitForRegistry(url: string, exited: Promise<void>, stderr: () => string): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  let gone = false;
  void exited.then(() => (gone = true));
  while (Date.now() < deadline && !gone) {
    const status = await pingStatus(url);
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
    http: { addr: host, ...(options.tls ? { tls: options.tls } : {}) },
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
  const url = `${options.tls ? 'https' : 'http'}://${host}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      // A registry draining its connections (or stuck) gets a few seconds, then SIGKILL: stop() always ends.
      const killLater = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(killLater);
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
  await run('skopeo', [...args, `oci:${layoutDir}:${tag}`, `docker://${registryHost}/${repo}:${tag}`], SKOPEO_BOUNDS);
}

/** The manifest bytes skopeo reads for `HOST/REPO:TAG`. */
export async function skopeoRawManifest(reference: string, creds?: string): Promise<Buffer> {
  ensureTools(TOOLS.skopeo);
  const args = ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${reference}`];
  const { stdout } = await run('skopeo', args, { encoding: 'buffer', ...SKOPEO_BOUNDS });
  return stdout;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  authorization?: string;
  range?: string;
}

/** What a fault-injecting proxy does instead of relaying a request faithfully. */
export type Fault =
  /** Answer this status (with Retry-After when given) without asking the registry. */
  | { kind: 'status'; status: number; retryAfter?: string }
  /** Relay half the body, then reset the connection (RST). */
  | { kind: 'reset' }
  /** Relay half the body, then close the connection cleanly (FIN): a truncated body. */
  | { kind: 'truncate' }
  /** Relay half the body, then send nothing more while keeping the connection open. */
  | { kind: 'stall' }
  /** Send no answer at all. */
  | { kind: 'stall-headers' }
  /** Wait this long, then relay faithfully (a slow registry). */
  | { kind: 'delay'; ms: number }
  /** Forward without the client's Range header, so a resumed request gets the whole blob (HTTP 200). */
  | { kind: 'ignore-range' };

export interface FaultRule {
  when: (request: ProxiedRequest) => boolean;
  fault: Fault;
  /** How many matching requests get the fault. */
  times: number;
}

export interface ProxyOptions {
  /** Answer blob GETs with a 307 to the same path on this origin (like a redirect to object storage). */
  redirectBlobsTo?: string;
  /** Authorization to send upstream instead of the client's (for a redirect target that signs its own requests). */
  upstreamAuthorization?: string;
  /** Answer this many requests with 503 and `Retry-After: 0` before proxying. */
  failFirst?: number;
  /** Faults to inject, the first matching rule with times left wins. */
  faults?: FaultRule[];
  /** Headers added to every answer (e.g. Docker Hub's ratelimit-remaining). */
  responseHeaders?: Record<string, string>;
}

export interface RecordingProxy {
  host: string;
  url: string;
  /** Every request received, in order. */
  requests: ProxiedRequest[];
  /** The faults injected, in order, with the path they hit. */
  injected: { path: string; fault: Fault['kind'] }[];
  /** The most requests that were in progress at once. */
  maxInFlight(): number;
  stop(): Promise<void>;
}

/** How to pass the upstream's answer on: faithfully, or broken by a fault. */
type Relay = (answer: IncomingMessage, response: ServerResponse) => void;

const relayFaithfully: Relay = (answer, response) => {
  response.writeHead(answer.statusCode ?? 502, answer.headers);
  answer.pipe(response);
};

/** Long enough for the client to read what was sent before the connection breaks. */
const BREAK_DELAY_MS = 100;

/** Relays the headers and half the body, then breaks the connection the way `kind` says. */
function relayBroken(kind: 'reset' | 'truncate' | 'stall'): Relay {
  return (answer, response) => {
    response.writeHead(answer.statusCode ?? 502, answer.headers);
    const half = Math.floor(Number(answer.headers['content-length'] ?? 0) / 2);
    let sent = 0;
    answer.on('data', (chunk: Buffer) => {
      if (sent >= half) return;
      const part = chunk.subarray(0, half - sent);
      sent += part.length;
      if (sent < half) return void response.write(part);
      answer.destroy();
      response.write(part, () => {
        const socket = response.socket as Socket | null;
        if (kind === 'reset') setTimeout(() => socket?.resetAndDestroy(), BREAK_DELAY_MS);
        if (kind === 'truncate') setTimeout(() => socket?.end(), BREAK_DELAY_MS);
      });
    });
  };
}

interface ForwardOptions {
  authorization?: string;
  /** Request target upstream (default: the incoming one). */
  path?: string;
  dropRange?: boolean;
  relay?: Relay;
}

function forward(upstream: string, request: IncomingMessage, response: ServerResponse, options: ForwardOptions = {}): void {
  const headers = { ...request.headers, host: upstream };
  delete headers.authorization;
  if (options.authorization) headers.authorization = options.authorization;
  if (options.dropRange) delete headers.range;
  const [hostname, port] = upstream.split(':');
  const relay = options.relay ?? relayFaithfully;
  const outgoing = httpRequest({ hostname, port, method: request.method, path: options.path ?? request.url, headers }, (answer) => relay(answer, response));
  outgoing.on('error', () => response.destroy());
  request.pipe(outgoing);
}

async function listen(server: Server): Promise<{ host: string; url: string; stop(): Promise<void> }> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const stop = async () => {
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  };
  return { host, url: `http://${host}`, stop };
}

/** An HTTP proxy in front of `upstream` ("127.0.0.1:PORT") that records each request and injects faults. */
export async function startProxy(upstream: string, options: ProxyOptions = {}): Promise<RecordingProxy> {
  const requests: ProxiedRequest[] = [];
  const injected: RecordingProxy['injected'] = [];
  const rules = [...(options.faults ?? []), ...(options.failFirst ? [{ when: () => true, fault: { kind: 'status', status: 503, retryAfter: '0' } as Fault, times: options.failFirst }] : [])];
  let inFlight = 0;
  let maxInFlight = 0;
  const server: Server = createServer((request, response) => {
    const path = request.url ?? '/';
    const recorded: ProxiedRequest = { method: request.method ?? '', path, authorization: request.headers.authorization, range: request.headers.range };
    requests.push(recorded);
    // In flight = waiting for the proxy to start answering: a request stops
    // counting before the client can have read the answer and sent the next
    // one (counting until 'close' would race that and over-count).
    maxInFlight = Math.max(maxInFlight, ++inFlight);
    let waiting = true;
    const answered = () => {
      if (waiting) inFlight--;
      waiting = false;
    };
    response.on('close', answered);
    const rule = rules.find((candidate) => candidate.times > 0 && candidate.when(recorded));
    if (rule) {
      rule.times--;
      injected.push({ path, fault: rule.fault.kind });
    }
    for (const [name, value] of Object.entries(options.responseHeaders ?? {})) response.setHeader(name, value);
    const fault = rule?.fault;
    if (fault?.kind === 'status') {
      response.writeHead(fault.status, fault.retryAfter === undefined ? {} : { 'retry-after': fault.retryAfter }).end('injected failure');
    } else if (fault?.kind === 'stall-headers') {
      // Say nothing; stop() closes the connection.
    } else if (options.redirectBlobsTo && path.includes('/blobs/sha256:')) {
      response.writeHead(307, { location: `${options.redirectBlobsTo}${path}` }).end();
    } else {
      const broken = fault?.kind === 'reset' || fault?.kind === 'truncate' || fault?.kind === 'stall' ? fault.kind : undefined;
      const relay = () => {
        answered();
        forward(upstream, request, response, {
          authorization: options.upstreamAuthorization ?? request.headers.authorization,
          dropRange: fault?.kind === 'ignore-range',
          relay: broken && relayBroken(broken),
        });
      };
      if (fault?.kind === 'delay') setTimeout(relay, fault.ms);
      else relay();
    }
  });
  const listening = await listen(server);
  return { ...listening, requests, injected, maxInFlight: () => maxInFlight };
}

export interface ForwardProxy {
  /** "http://127.0.0.1:PORT", for HTTP_PROXY and HTTPS_PROXY. */
  url: string;
  /** "GET http://host/path" for proxied HTTP requests, "CONNECT host:port" for tunnels. */
  requests: string[];
  stop(): Promise<void>;
}

/** A forward proxy as HTTP_PROXY/HTTPS_PROXY expect: absolute-URI requests, and CONNECT tunnels for HTTPS. */
export async function startForwardProxy(): Promise<ForwardProxy> {
  const requests: string[] = [];
  const server = createServer((request, response) => {
    requests.push(`${request.method} ${request.url}`);
    const target = new URL(request.url ?? '/');
    forward(target.host, request, response, { authorization: request.headers.authorization, path: `${target.pathname}${target.search}` });
  });
  server.on('connect', (request: IncomingMessage, client: Socket, head: Buffer) => {
    requests.push(`CONNECT ${request.url}`);
    const [hostname, port] = (request.url ?? '').split(':');
    const upstream = connect(Number(port), hostname, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(client).on('error', () => client.destroy());
      client.pipe(upstream).on('error', () => upstream.destroy());
    });
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  const { url, stop } = await listen(server);
  return { url, requests, stop };
}
