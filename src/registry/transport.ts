/**
 * HTTP for registries on node:http and node:https rather than fetch. Node's
 * fetch takes neither per-host TLS settings nor the proxy variables without
 * the undici package, while node's Agent does both: `proxyEnv` (HTTP_PROXY,
 * HTTPS_PROXY, NO_PROXY; CONNECT tunnels for HTTPS), `ca` and
 * `rejectUnauthorized`. Answers come back as HttpResponse, the part of fetch's
 * Response that callers read, without loading fetch's implementation.
 *
 * Every request has a stall watchdog: no connection, no headers or no body
 * bytes for `stallTimeoutMs` aborts it, so a server that stops sending cannot
 * hang a build forever.
 */
import type { Agent as HttpAgent, ClientRequest, IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { InputError, RegistryError } from '../errors.ts';
import { isLoopbackRegistry } from '../oci/reference.ts';
import { INPUT_FILE_LIMITS, readInputTextSync } from '../util/input-file.ts';
import { TransientError } from './retry.ts';

/**
 * Not an ESM import: making node:http's module namespace runs its lazy
 * WebSocket getters, which load undici (fetch's implementation), ~20 ms of
 * CPU on every run for nothing rampack uses.
 */
const http = process.getBuiltinModule('node:http');

export const DEFAULT_STALL_TIMEOUT_MS = 30_000;
/** Concurrent requests per registry host: enough to fill a link, few enough not to be throttled. */
export const REQUESTS_PER_REGISTRY = 4;
const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);
const UPLOAD_SLICE = 64 * 1024;

export interface TransportOptions {
  /** PEM file of extra CAs to trust, on top of Node's bundled roots. */
  caFile?: string;
  /** Hosts ("host" or "host:port") whose TLS certificates are not verified and that may speak plain HTTP. */
  insecureRegistries?: readonly string[];
  /** Abort a request when nothing arrives for this long (default 30 s). */
  stallTimeoutMs?: number;
  /** Where proxy variables are read (default process.env). */
  proxyEnv?: NodeJS.ProcessEnv;
}

export interface SendOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Uint8Array | string | Readable;
}

/** The server answered a TLS handshake in plain HTTP: it is an http:// registry. */
export class PlainHttpServerError extends Error {}

/** Whether `error` is a certificate Node refused to trust (self-signed, unknown issuer, wrong name, expired). */
function isCertificateError(error: NodeJS.ErrnoException): boolean {
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)/.test(error.code ?? '');
}

/** OpenSSL's complaint when the peer's first bytes are not a TLS record (an HTTP answer). */
function isPlainHttpAnswer(error: NodeJS.ErrnoException): boolean {
  return /wrong.version.number|packet.length.too.long/i.test(`${error.code} ${error.message}`);
}

/** A small counting semaphore. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(size: number) {
    this.free = size;
  }
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

function* slices(data: Buffer): Generator<Buffer> {
  for (let offset = 0; offset < data.length; offset += UPLOAD_SLICE) yield data.subarray(offset, offset + UPLOAD_SLICE);
}

function readCaFile(path: string): string {
  const hint = 'pass a PEM bundle of CA certificates to --ca-file';
  const pem = readInputTextSync(path, 'CA file', INPUT_FILE_LIMITS.config, hint);
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new InputError(`cannot use CA file ${path}: it holds no PEM certificate`, { hint });
  return pem;
}

export class Transport {
  private readonly insecure: ReadonlySet<string>;
  private readonly stallTimeoutMs: number;
  private readonly httpAgent: HttpAgent;
  private readonly verifyingAgent: HttpsAgent;
  private readonly trustingAgent: HttpsAgent;
  private readonly slots = new Map<string, Slots>();

  constructor(options: TransportOptions = {}) {
    this.insecure = new Set(options.insecureRegistries ?? []);
    this.stallTimeoutMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const proxyEnv = options.proxyEnv ?? process.env;
    checkProxySupport(proxyEnv);
    const ca = options.caFile ? [...rootCertificates, readCaFile(options.caFile)] : undefined;
    this.httpAgent = new http.Agent({ keepAlive: true, proxyEnv });
    this.verifyingAgent = new HttpsAgent({ keepAlive: true, proxyEnv, ca });
    this.trustingAgent = new HttpsAgent({ keepAlive: true, proxyEnv, rejectUnauthorized: false });
  }

  /** Closes idle keep-alive connections, which would otherwise keep the process alive. */
  close(): void {
    for (const agent of [this.httpAgent, this.verifyingAgent, this.trustingAgent]) agent.destroy();
  }

  /** Whether `host` ("host:port") is listed as insecure, by itself or by name with any port. */
  isInsecure(host: string): boolean {
    return this.insecure.has(host) || this.insecure.has(new URL(`http://${host}`).hostname);
  }

  /** Registries that may be reached over plain HTTP when they do not speak TLS. */
  allowsPlainHttp(host: string): boolean {
    return isLoopbackRegistry(host) || this.isInsecure(host);
  }

  /** Runs `task` in one of the registry's request slots (REQUESTS_PER_REGISTRY at a time). */
  limited<T>(host: string, task: () => Promise<T>): Promise<T> {
    let slots = this.slots.get(host);
    if (!slots) this.slots.set(host, (slots = new Slots(REQUESTS_PER_REGISTRY)));
    return slots.run(task);
  }

  /** Sends one request; rejects with TransientError (network), RegistryError (TLS trust) or PlainHttpServerError. */
  send(url: URL, options: SendOptions = {}): Promise<HttpResponse> {
    const method = options.method ?? 'GET';
    const https = url.protocol === 'https:';
    const agent = !https ? this.httpAgent : this.isInsecure(url.host) ? this.trustingAgent : this.verifyingAgent;
    return new Promise((resolve, reject) => {
      const request = (https ? httpsRequest : http.request)(url, { method, headers: options.headers, agent });
      const stall = this.watchdog(request, url);
      request.on('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(stall.timer);
        reject(this.networkError(error, url));
      });
      request.on('response', (incoming) => {
        stall.timer.refresh();
        try {
          resolve(toResponse(incoming, method, stall));
        } catch (error) {
          request.destroy();
          reject(error);
        }
      });
      if (options.body === undefined) return void request.end();
      // Upload progress feeds the watchdog too: a big PUT on a slow link is not a stall.
      if (!(options.body instanceof Readable)) request.setHeader('content-length', Buffer.byteLength(options.body));
      const body = options.body instanceof Readable ? options.body : Readable.from(slices(Buffer.from(options.body)));
      body.on('data', () => stall.timer.refresh()).on('error', (error) => request.destroy(error)).pipe(request);
    });
  }

  private watchdog(request: ClientRequest, url: URL): Stall {
    const stall: Stall = {
      stalled: false,
      error: () => new TransientError(`${url.host} sent nothing for ${this.stallTimeoutMs / 1000} s`),
      timer: setTimeout(() => {
        stall.stalled = true;
        request.destroy(stall.error());
      }, this.stallTimeoutMs).unref(),
    };
    return stall;
  }

  private networkError(error: NodeJS.ErrnoException, url: URL): Error {
    if (error instanceof TransientError) return error;
    if (isPlainHttpAnswer(error)) return new PlainHttpServerError(`${url.host} answered TLS in plain HTTP`, { cause: error });
    if (isCertificateError(error)) {
      return new RegistryError(`the TLS certificate of ${url.host} is not trusted: ${error.message} (${error.code})`, {
        hint: `pass --ca-file with the CA that signed it, or --insecure-registry ${url.host} to skip verification (only on a network you trust)`,
      });
    }
    return new TransientError(`cannot reach ${url.host}: ${error.code ?? error.message}`, { cause: error });
  }
}

const PROXY_VARIABLES = ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'];

/** Node's agents honour proxy variables from 24.5 on; below that they would be ignored in silence. */
function checkProxySupport(env: NodeJS.ProcessEnv): void {
  const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
  const supported = major > 24 || (major === 24 && minor >= 5);
  const variable = PROXY_VARIABLES.find((name) => env[name]);
  if (!supported && variable) {
    throw new InputError(`${variable} is set, but Node ${process.versions.node} cannot send registry traffic through a proxy`, {
      hint: 'run rampack on Node >= 24.5 (`npx rampack` in the rampack checkout uses its pinned Node 24)',
    });
  }
}

const transports = new Map<string, Transport>();

/**
 * One transport per distinct setting, shared by every store of the process,
 * so that connections are reused and the per-registry bound holds across images.
 */
export function sharedTransport(options: TransportOptions): Transport {
  const { caFile, insecureRegistries, stallTimeoutMs, proxyEnv } = options;
  const key = JSON.stringify([caFile, insecureRegistries, stallTimeoutMs, proxyEnv]);
  let transport = transports.get(key);
  if (!transport) transports.set(key, (transport = new Transport({ caFile, insecureRegistries, stallTimeoutMs, proxyEnv })));
  return transport;
}

/** Closes every shared transport: call once the process has no more requests to make. */
export function closeTransports(): void {
  for (const transport of transports.values()) transport.close();
  transports.clear();
}

interface Stall {
  stalled: boolean;
  timer: NodeJS.Timeout;
  error(): TransientError;
}

/**
 * What the registry client reads of an HTTP answer: the part of fetch's
 * Response it uses, so a real Response fits it too. Node's
 * Response is undici's, whose loading alone costs every run ~20 ms of CPU.
 */
export interface HttpResponse {
  readonly status: number;
  readonly statusText: string;
  /** 2xx. */
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  readonly body: ReadableStream<Uint8Array> | null;
  text(): Promise<string>;
}

/** HTTP whitespace around a header value, which fetch's Headers strips too. */
const VALUE_PADDING = /^[\t\n\r ]+|[\t\n\r ]+$/g;

/** Header values by lower-case name; a repeated header's values joined with ", ", as in fetch's Headers. */
class ResponseHeaders {
  readonly #values = new Map<string, string>();

  constructor(raw: readonly string[]) {
    for (let index = 0; index < raw.length; index += 2) {
      const name = raw[index]!.toLowerCase();
      const value = raw[index + 1]!.replace(VALUE_PADDING, '');
      const earlier = this.#values.get(name);
      this.#values.set(name, earlier === undefined ? value : `${earlier}, ${value}`);
    }
  }

  get(name: string): string | null {
    return this.#values.get(name.toLowerCase()) ?? null;
  }
}

class IncomingResponse implements HttpResponse {
  readonly status: number;
  readonly statusText: string;
  readonly headers: ResponseHeaders;
  readonly body: ReadableStream<Uint8Array> | null;

  constructor(incoming: IncomingMessage, body: ReadableStream<Uint8Array> | null) {
    this.status = incoming.statusCode ?? 0;
    this.statusText = incoming.statusMessage ?? '';
    this.headers = new ResponseHeaders(incoming.rawHeaders);
    this.body = body;
  }

  get ok(): boolean {
    return this.status >= 200 && this.status <= 299;
  }

  async text(): Promise<string> {
    const chunks: Uint8Array[] = [];
    for await (const chunk of this.body ?? []) chunks.push(chunk);
    return Buffer.concat(chunks).toString('utf8');
  }
}

function toResponse(incoming: IncomingMessage, method: string, stall: Stall): HttpResponse {
  if (method === 'HEAD' || NULL_BODY_STATUSES.has(incoming.statusCode ?? 0)) {
    clearTimeout(stall.timer);
    incoming.resume();
    return new IncomingResponse(incoming, null);
  }
  return new IncomingResponse(incoming, watchedBody(incoming, stall));
}

/**
 * The body as a web stream: each chunk resets the stall watchdog, a stall
 * surfaces as its own error, and cancelling it (even before the first read)
 * closes the connection.
 */
function watchedBody(incoming: IncomingMessage, stall: Stall): ReadableStream<Uint8Array> {
  const chunks = incoming[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const { value, done } = await chunks.next();
          if (done) {
            clearTimeout(stall.timer);
            controller.close();
            return;
          }
          stall.timer.refresh();
          controller.enqueue(value);
        } catch (error) {
          clearTimeout(stall.timer);
          throw stall.stalled ? stall.error() : error;
        }
      },
      cancel() {
        clearTimeout(stall.timer);
        incoming.destroy();
      },
    },
    { highWaterMark: 0 },
  );
}
