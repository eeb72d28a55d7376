/**
 * An OCI distribution client for one repository: the /v2/ ping that reveals
 * the scheme and how to authenticate, authorised GETs with bounded retries,
 * resumable blob downloads, and registry errors turned into messages a user
 * can act on.
 *
 * HTTPS first; plain HTTP only for loopback and --insecure-registry hosts
 * whose server turns out not to speak TLS (what containerd does for localhost).
 *
 * Redirects are followed here, not by the transport: blob GETs are often
 * redirected to object storage, and Authorization must reach the registry's
 * own origin only.
 */
import { Readable } from 'node:stream';
import { InputError, RampackError, RegistryError, VerificationError } from '../errors.ts';
import type { ImageReference } from '../oci/reference.ts';
import type { Logger } from '../util/log.ts';
import { Authorizer, parseChallenge } from './auth.ts';
import { discardBody } from './body.ts';
import type { CredentialLookup } from './credentials.ts';
import { checkTransient, describeNetworkError, TransientError, withRetries, type RetryPolicy } from './retry.ts';
import { PlainHttpServerError, type HttpResponse, type Transport } from './transport.ts';

const MAX_REDIRECTS = 5;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const ERROR_BODY_LIMIT = 64 * 1024;

export interface ClientOptions {
  lookup: CredentialLookup;
  userAgent: string;
  retry: RetryPolicy;
  log: Logger;
  transport: Transport;
}

/** Where a resumable download writes: bytes arrive in order, and may start over from 0. */
export interface DownloadSink {
  /** Bytes written so far: a retry asks for the rest with `Range: bytes=<received>-`. */
  readonly received: number;
  append(chunks: AsyncIterable<Uint8Array>): Promise<void>;
  restart(): Promise<void>;
}

/** One GET, described for error messages. */
export interface RegistryRequest {
  /** Path under the registry's origin: "/v2/library/golang/manifests/1.22". */
  path: string;
  accept?: string;
  /** "fetching the manifest of docker.io/library/golang:1.22". */
  what: string;
  /** What a 404 means is missing: "image docker.io/library/golang:1.22". */
  subject: string;
  /** Headers computed as each attempt starts (a Range that follows a download's progress). */
  headers?: () => Record<string, string>;
}

/** Whether a 206 continues at `offset`: `Content-Range: bytes <offset>-<last>/<size|*>`. */
function continuesAt(response: HttpResponse, offset: number): boolean {
  const range = response.headers.get('content-range')?.match(/^bytes (\d+)-\d+\/(?:\d+|\*)$/);
  return response.status === 206 && Number(range?.[1]) === offset;
}

/** Docker Hub's `ratelimit-remaining: 42;w=21600`: the number before the window. */
function rateLimitCount(headers: HttpResponse['headers'], name: string): number | undefined {
  const value = Number.parseInt(headers.get(name) ?? '', 10);
  return Number.isNaN(value) ? undefined : value;
}

/** Warn when a tenth or less of the announced pull allowance is left. */
const RATE_LIMIT_WARNING_FRACTION = 0.1;

/** Reads a whole (small) body, refusing more than `limit` bytes. */
export async function readBody(response: HttpResponse, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body ?? []) {
    length += chunk.length;
    if (length > limit) {
      // Leaving the loop cancels the body (and closes the connection): the reader holds its lock.
      throw new VerificationError(`${what}: the registry sent more than the expected ${limit} bytes`);
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

/** "CODE: message" of the distribution error body, when there is one. */
async function errorDetail(response: HttpResponse): Promise<string> {
  try {
    const body = JSON.parse((await readBody(response, ERROR_BODY_LIMIT, 'error body')).toString('utf8')) as {
      errors?: { code?: string; message?: string }[];
    };
    const details = (body.errors ?? []).map((error) => [error.code, error.message].filter(Boolean).join(': '));
    return details.length > 0 ? ` (${details.join('; ')})` : '';
  } catch {
    return '';
  }
}

export class RegistryClient {
  readonly image: ImageReference;
  private origin: string;
  private readonly options: ClientOptions;
  private readonly auth: Authorizer;
  private ping?: Promise<void>;
  private rateLimitWarned = false;

  constructor(image: ImageReference, options: ClientOptions) {
    this.image = image;
    this.options = options;
    this.origin = `https://${image.host}`;
    this.auth = new Authorizer({
      registry: image.registry,
      repository: image.repository,
      lookup: options.lookup,
      userAgent: options.userAgent,
      retry: options.retry,
      transport: options.transport,
    });
  }

  /**
   * GETs `request.path` and hands the successful response to `consume`. Both
   * run inside the retry loop, so a body cut off mid-transfer is fetched
   * again, and inside one of the registry's request slots.
   */
  async get<T>(request: RegistryRequest, consume: (response: HttpResponse) => Promise<T>): Promise<T> {
    await this.pinged();
    const hint = `check that ${this.image.registry} is reachable and retry; the registry may be overloaded or down`;
    return withRetries(this.options.retry, { what: request.what, hint }, () =>
      this.options.transport.limited(this.image.host, async () => {
        const response = await this.sendAuthorized(request);
        if (!response.ok) throw await this.failure(response, request);
        this.watchRateLimit(response.headers);
        try {
          return await consume(response);
        } catch (error) {
          // A consumer that gave up before reading the body leaves it open: close its connection.
          discardBody(response);
          if (error instanceof RampackError || error instanceof TransientError) throw error;
          throw new TransientError(`the transfer broke off: ${describeNetworkError(error)}`, { cause: error });
        }
      }),
    );
  }

  /**
   * GETs a blob into `sink`. After a broken transfer the retry asks for the
   * rest (`Range: bytes=N-`) and appends it when the registry answers 206
   * from exactly there; any other answer starts the blob over.
   */
  download(request: RegistryRequest, sink: DownloadSink): Promise<void> {
    const resuming = (): Record<string, string> => (sink.received > 0 ? { range: `bytes=${sink.received}-` } : {});
    return this.get({ ...request, headers: resuming }, async (response) => {
      if (sink.received > 0 && continuesAt(response, sink.received)) {
        this.options.log.debug(`${request.what}: resuming at byte ${sink.received}`);
      } else if (sink.received > 0) {
        this.options.log.debug(`${request.what}: the registry cannot resume at byte ${sink.received} (HTTP ${response.status}); starting over`);
        await sink.restart();
        if (response.status !== 200) {
          discardBody(response);
          throw new TransientError(`the registry answered a range request with HTTP ${response.status}`);
        }
      }
      await sink.append(response.body ?? Readable.from([]));
    });
  }

  /** Warns once when Docker Hub's announced pull allowance runs low. */
  private watchRateLimit(headers: HttpResponse['headers']): void {
    const limit = rateLimitCount(headers, 'ratelimit-limit');
    const remaining = rateLimitCount(headers, 'ratelimit-remaining');
    if (this.rateLimitWarned || limit === undefined || remaining === undefined || remaining > limit * RATE_LIMIT_WARNING_FRACTION) return;
    this.rateLimitWarned = true;
    this.options.log.warn(`registry ${this.image.registry} allows ${remaining} more pulls of its ${limit} per window; logging in raises the limit`);
  }

  private pinged(): Promise<void> {
    this.ping ??= this.sendPing();
    return this.ping;
  }

  /** GET /v2/: 200 means no authentication, 401 carries the challenge to answer. */
  private async sendPing(): Promise<void> {
    const what = `contacting registry ${this.image.registry}`;
    const hint = `check the registry name and your network (rampack speaks HTTPS, and plain HTTP only to loopback and --insecure-registry hosts)`;
    const response = await withRetries(this.options.retry, { what, hint }, () => this.options.transport.limited(this.image.host, () => this.pingOnce()));
    discardBody(response);
    if (response.status === 401) {
      this.auth.learn(parseChallenge(response.headers.get('www-authenticate')));
    } else if (!response.ok) {
      throw new RegistryError(`${what} (${this.origin}): GET /v2/ answered HTTP ${response.status}; this is not an OCI distribution registry`, {
        hint,
        status: response.status,
      });
    }
  }

  /** GET /v2/ over HTTPS, or over HTTP when the server does not speak TLS and may be trusted without it. */
  private async pingOnce(): Promise<HttpResponse> {
    try {
      return await this.send(new URL('/v2/', this.origin), {});
    } catch (error) {
      if (!(error instanceof PlainHttpServerError)) throw error;
      const { host, registry } = this.image;
      if (!this.options.transport.allowsPlainHttp(host)) {
        throw new RegistryError(`registry ${registry} speaks plain HTTP, not HTTPS`, {
          hint: `if you trust the network to ${host}, pass --insecure-registry ${host}`,
        });
      }
      this.origin = `http://${host}`;
      this.options.log.debug(`registry ${registry} does not speak TLS; using ${this.origin}`);
      return this.send(new URL('/v2/', this.origin), {});
    }
  }

  /** One GET with the current authorization, renewed once if the registry challenges it. */
  private async sendAuthorized(request: RegistryRequest): Promise<HttpResponse> {
    const url = new URL(request.path, this.origin);
    const headers = () => ({ ...(request.accept ? { accept: request.accept } : {}), ...request.headers?.() });
    const response = await this.send(url, headers(), await this.auth.header());
    if (response.status !== 401 || !this.auth.renew(parseChallenge(response.headers.get('www-authenticate')))) return response;
    discardBody(response);
    return this.send(url, headers(), await this.auth.header());
  }

  /** Sends a GET, following redirects with Authorization kept to the registry's origin. */
  private async send(start: URL, headers: Record<string, string>, authorization?: string): Promise<HttpResponse> {
    let url = start;
    for (let hop = 0; ; hop++) {
      const sameOrigin = url.origin === this.origin;
      const response = await this.options.transport.send(url, {
        headers: {
          ...headers,
          // Transparent decompression would change the bytes the digest covers.
          'accept-encoding': 'identity',
          'user-agent': this.options.userAgent,
          ...(sameOrigin && authorization ? { authorization } : {}),
        },
      });
      const location = response.headers.get('location');
      if (!REDIRECT_STATUSES.has(response.status) || !location) return checkTransient(response, url.host);
      discardBody(response);
      if (hop >= MAX_REDIRECTS) throw new RegistryError(`registry ${this.image.registry} redirected more than ${MAX_REDIRECTS} times for ${start.pathname}`);
      url = new URL(location, url);
      this.options.log.debug(`${start.pathname}: redirected to ${url.origin}`);
    }
  }

  private async failure(response: HttpResponse, request: RegistryRequest): Promise<RampackError> {
    const { registry } = this.image;
    if (response.status === 401 || response.status === 403) {
      discardBody(response);
      return this.auth.deniedError(response.status);
    }
    const detail = await errorDetail(response);
    if (response.status === 404) {
      return new InputError(`${request.subject} not found in registry ${registry}${detail}`, {
        hint: `check the repository name and the tag or digest, e.g. with \`skopeo list-tags docker://${registry}/${this.image.repository}\``,
      });
    }
    return new RegistryError(`${request.what} failed: registry ${registry} answered HTTP ${response.status}${detail}`, {
      status: response.status,
      hint: 'retry later; if it persists, report it to the registry operator',
    });
  }

  /**
   * One request of the push protocol (HEAD, POST, PATCH, PUT) to a path or to
   * an upload URL the registry gave, authorized (renewed once on a challenge,
   * which is how a token gains push scope), in one of the registry's request
   * slots. Redirects are returned, not followed, and nothing is retried: only
   * the caller knows which steps of an upload may be repeated. Transient
   * answers throw TransientError, answers outside `expect` the usual errors.
   */
  async exchange(request: RegistryRequest & { method: string; body?: Uint8Array; expect: readonly number[] }): Promise<HttpResponse> {
    await this.pinged();
    return this.options.transport.limited(this.image.host, async () => {
      const url = new URL(request.path, this.origin);
      const send = async () => {
        const authorization = url.origin === this.origin ? await this.auth.header() : undefined;
        const headers = { ...request.headers?.(), 'user-agent': this.options.userAgent, ...(authorization ? { authorization } : {}) };
        return checkTransient(await this.options.transport.send(url, { method: request.method, headers, body: request.body }), url.host);
      };
      let response = await send();
      if (response.status === 401 && this.auth.renew(parseChallenge(response.headers.get('www-authenticate')))) {
        discardBody(response);
        response = await send();
      }
      if (!request.expect.includes(response.status)) throw await this.failure(response, request);
      return response;
    });
  }
}
