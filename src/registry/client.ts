/**
 * An OCI distribution client for one repository, on Node's built-in fetch:
 * the /v2/ ping that reveals how to authenticate, authorised GETs with bounded
 * retries, and registry errors turned into messages a user can act on.
 *
 * Redirects are followed here (`redirect: 'manual'`), not by fetch: blob GETs
 * are often redirected to object storage, and Authorization must reach the
 * registry's own origin only. Owning the rule keeps it independent of the
 * fetch implementation.
 */
import { InputError, RampackError, RegistryError, VerificationError } from '../errors.ts';
import { isLoopbackRegistry, type ImageReference } from '../image/reference.ts';
import type { Logger } from '../util/log.ts';
import { Authorizer, parseChallenge } from './auth.ts';
import type { CredentialLookup } from './credentials.ts';
import { checkTransient, describeNetworkError, TransientError, withRetries, type RetryPolicy } from './retry.ts';

const MAX_REDIRECTS = 5;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const ERROR_BODY_LIMIT = 64 * 1024;

export interface ClientOptions {
  lookup: CredentialLookup;
  userAgent: string;
  retry: RetryPolicy;
  log: Logger;
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
}

/** Reads a whole (small) body, refusing more than `limit` bytes. */
export async function readBody(response: Response, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body ?? []) {
    length += chunk.length;
    if (length > limit) {
      void response.body?.cancel();
      throw new VerificationError(`${what}: the registry sent more than the expected ${limit} bytes`);
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

/** "CODE: message" of the distribution error body, when there is one. */
async function errorDetail(response: Response): Promise<string> {
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
  private readonly origin: string;
  private readonly options: ClientOptions;
  private readonly auth: Authorizer;
  private ping?: Promise<void>;

  constructor(image: ImageReference, options: ClientOptions) {
    this.image = image;
    this.options = options;
    this.origin = `${isLoopbackRegistry(image.host) ? 'http' : 'https'}://${image.host}`;
    this.auth = new Authorizer({
      registry: image.registry,
      repository: image.repository,
      lookup: options.lookup,
      userAgent: options.userAgent,
      retry: options.retry,
    });
  }

  /**
   * GETs `request.path` and hands the successful response to `consume`. Both
   * run inside the retry loop, so a body cut off mid-transfer is fetched again.
   */
  async get<T>(request: RegistryRequest, consume: (response: Response) => Promise<T>): Promise<T> {
    await this.pinged();
    const hint = `check that ${this.image.registry} is reachable and retry; the registry may be overloaded or down`;
    return withRetries(this.options.retry, { what: request.what, hint }, async () => {
      const response = await this.sendAuthorized(request);
      if (!response.ok) throw await this.failure(response, request);
      try {
        return await consume(response);
      } catch (error) {
        if (error instanceof RampackError) throw error;
        throw new TransientError(`the transfer broke off: ${describeNetworkError(error)}`, { cause: error });
      }
    });
  }

  private pinged(): Promise<void> {
    this.ping ??= this.sendPing();
    return this.ping;
  }

  /** GET /v2/: 200 means no authentication, 401 carries the challenge to answer. */
  private async sendPing(): Promise<void> {
    const what = `contacting registry ${this.image.registry} (${this.origin})`;
    const hint = `check the registry name and your network; rampack uses HTTPS except for loopback registries`;
    const response = await withRetries(this.options.retry, { what, hint }, () => this.send(new URL('/v2/', this.origin), {}));
    void response.body?.cancel();
    if (response.status === 401) {
      this.auth.learn(parseChallenge(response.headers.get('www-authenticate')));
    } else if (!response.ok) {
      throw new RegistryError(`${what}: GET /v2/ answered HTTP ${response.status}; this is not an OCI distribution registry`, {
        hint,
        status: response.status,
      });
    }
  }

  /** One GET with the current authorization, renewed once if the registry challenges it. */
  private async sendAuthorized(request: RegistryRequest): Promise<Response> {
    const url = new URL(request.path, this.origin);
    const headers: Record<string, string> = request.accept ? { accept: request.accept } : {};
    const response = await this.send(url, headers, await this.auth.header());
    if (response.status !== 401 || !this.auth.renew(parseChallenge(response.headers.get('www-authenticate')))) return response;
    void response.body?.cancel();
    return this.send(url, headers, await this.auth.header());
  }

  /** Sends a GET, following redirects with Authorization kept to the registry's origin. */
  private async send(start: URL, headers: Record<string, string>, authorization?: string): Promise<Response> {
    let url = start;
    for (let hop = 0; ; hop++) {
      const sameOrigin = url.origin === this.origin;
      const response = await fetch(url, {
        redirect: 'manual',
        headers: {
          ...headers,
          // Transparent decompression would change the bytes the digest covers.
          'accept-encoding': 'identity',
          'user-agent': this.options.userAgent,
          ...(sameOrigin && authorization ? { authorization } : {}),
        },
      }).catch((error: unknown) => {
        throw new TransientError(`cannot connect to ${url.host}: ${describeNetworkError(error)}`, { cause: error });
      });
      const location = response.headers.get('location');
      if (!REDIRECT_STATUSES.has(response.status) || !location) return checkTransient(response, url.host);
      void response.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw new RegistryError(`registry ${this.image.registry} redirected more than ${MAX_REDIRECTS} times for ${start.pathname}`);
      url = new URL(location, url);
      this.options.log.debug(`${start.pathname}: redirected to ${url.origin}`);
    }
  }

  private async failure(response: Response, request: RegistryRequest): Promise<RampackError> {
    const { registry } = this.image;
    if (response.status === 401 || response.status === 403) {
      void response.body?.cancel();
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
}
