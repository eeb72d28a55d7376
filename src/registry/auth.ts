/**
 * Registry authentication from `WWW-Authenticate` challenges: Basic (the
 * credentials on every request) and the Bearer token flow (a token per scope
 * from the challenge's realm, fetched with Basic credentials when known, else
 * anonymously; cached until it expires or the registry rejects it).
 */
import { RegistryError } from '../errors.ts';
import type { CredentialLookup, Credentials } from './credentials.ts';
import { checkTransient, describeNetworkError, TransientError, withRetries, type RetryPolicy } from './retry.ts';

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const CHALLENGE_PARAM = /([\w-]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/g;

/** Parses `Bearer realm="...",service="...",scope="..."` (the first challenge only). */
export function parseChallenge(header: string | null): Challenge | undefined {
  const match = header?.trim().match(/^(\S+)\s*(.*)$/s);
  if (!match) return undefined;
  const params: Record<string, string> = {};
  for (const [, key, quoted, bare] of match[2]!.matchAll(CHALLENGE_PARAM)) {
    params[key!.toLowerCase()] = quoted?.replace(/\\(.)/g, '$1') ?? bare!;
  }
  return { scheme: match[1]!.toLowerCase(), params };
}

interface Token {
  value: string;
  expiresAt: number;
}

/** Tokens without expires_in live 60 s (the distribution spec's default and minimum). */
const MIN_TOKEN_LIFETIME_S = 60;
/** Renew a little early so a token does not expire between check and use. */
const TOKEN_RENEWAL_MARGIN_MS = 10_000;

export interface AuthorizerOptions {
  /** Registry as users name it, for credentials and messages. */
  registry: string;
  repository: string;
  lookup: CredentialLookup;
  userAgent: string;
  retry: RetryPolicy;
}

export class Authorizer {
  private readonly options: AuthorizerOptions;
  private challenge?: Challenge;
  private scope: string;
  private readonly tokens = new Map<string, Token>();
  private credentials?: Promise<Credentials | undefined>;

  constructor(options: AuthorizerOptions) {
    this.options = options;
    this.scope = `repository:${options.repository}:pull`;
  }

  /** Records the registry's challenge (from the /v2/ ping or a 401). */
  learn(challenge: Challenge | undefined): void {
    this.challenge = challenge;
    if (challenge?.params.scope) this.scope = challenge.params.scope;
  }

  /**
   * After a 401: takes the new challenge and forgets the rejected token.
   * Returns whether another attempt can send something different.
   */
  renew(challenge: Challenge | undefined): boolean {
    const previousScheme = this.challenge?.scheme;
    this.learn(challenge);
    this.tokens.delete(this.scope);
    // A new token may be accepted; Basic credentials help only if they were not sent already.
    return challenge?.scheme === 'bearer' || (challenge?.scheme === 'basic' && previousScheme !== 'basic');
  }

  /** The Authorization header value for the next request, if the registry wants one. */
  async header(): Promise<string | undefined> {
    const scheme = this.challenge?.scheme;
    if (scheme === 'basic') {
      const credentials = await this.lookupCredentials();
      return credentials && `Basic ${basic(credentials)}`;
    }
    if (scheme === 'bearer') return `Bearer ${await this.token()}`;
    return undefined;
  }

  private lookupCredentials(): Promise<Credentials | undefined> {
    this.credentials ??= this.options.lookup(this.options.registry);
    return this.credentials;
  }

  private async token(): Promise<string> {
    const cached = this.tokens.get(this.scope);
    if (cached && cached.expiresAt > Date.now()) return cached.value;
    const token = await this.fetchToken();
    this.tokens.set(this.scope, token);
    return token.value;
  }

  private tokenUrl(): URL {
    const { realm, service } = this.challenge!.params;
    if (!realm) throw new RegistryError(`registry ${this.options.registry} sent a Bearer challenge without a realm`);
    const url = new URL(realm);
    if (service) url.searchParams.set('service', service);
    // A challenge may list several scopes separated by spaces: one parameter each.
    for (const scope of this.scope.split(' ').filter(Boolean)) url.searchParams.append('scope', scope);
    return url;
  }

  private async fetchToken(): Promise<Token> {
    const url = this.tokenUrl();
    const credentials = await this.lookupCredentials();
    const headers: Record<string, string> = { 'user-agent': this.options.userAgent };
    if (credentials) headers.authorization = `Basic ${basic(credentials)}`;
    const what = `getting a token for ${this.options.repository} from ${url.origin}`;
    const hint = 'check that the registry and its token service are reachable, then retry';
    const response = await withRetries(this.options.retry, { what, hint }, async () => {
      const answer = await fetch(url, { headers }).catch((error: unknown) => {
        throw new TransientError(`cannot connect: ${describeNetworkError(error)}`, { cause: error });
      });
      return checkTransient(answer, url.origin);
    });
    if (response.status === 401 || response.status === 403) {
      void response.body?.cancel();
      throw this.denied(credentials, response.status);
    }
    if (!response.ok) {
      void response.body?.cancel();
      throw new RegistryError(`${what} failed: HTTP ${response.status}`, { hint, status: response.status });
    }
    return this.parseToken(await response.text(), what);
  }

  private parseToken(text: string, what: string): Token {
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new RegistryError(`${what}: the answer is not JSON`);
    }
    const value = body.token || body.access_token;
    if (!value) throw new RegistryError(`${what}: the answer holds no token`);
    const lifetime = Math.max(MIN_TOKEN_LIFETIME_S, Number(body.expires_in) || 0);
    return { value, expiresAt: Date.now() + lifetime * 1000 - TOKEN_RENEWAL_MARGIN_MS };
  }

  /** The error for a registry that refuses access, with advice fitting whether credentials were sent. */
  private denied(credentials: Credentials | undefined, status: number): RegistryError {
    const { registry, repository } = this.options;
    if (credentials) {
      return new RegistryError(`registry ${registry} refused access to ${repository} with the credentials from ${credentials.source} (HTTP ${status})`, {
        hint: `check the user name and password, and that the account may pull ${repository}`,
        status,
      });
    }
    return new RegistryError(`registry ${registry} requires authentication for ${repository} (HTTP ${status}), or the repository does not exist`, {
      hint: `log in with \`docker login ${registry}\` (rampack reads ~/.docker/config.json or $DOCKER_CONFIG), or pass --username and --password-stdin`,
      status,
    });
  }

  /** The error for a request the registry refused after authentication. */
  async deniedError(status: number): Promise<RegistryError> {
    return this.denied(await this.lookupCredentials(), status);
  }
}

function basic(credentials: Credentials): string {
  return Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64');
}
