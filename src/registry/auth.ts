/**
 * Registry authentication from `WWW-Authenticate` challenges: Basic (the
 * credentials on every request) and the Bearer token flow: a token per scope
 * from the challenge's realm, cached until it expires or the registry rejects
 * it. With a password or an identity token, the token comes from the OAuth2
 * POST (grant_type=password or refresh_token), falling back to the classic
 * GET with Basic credentials where the realm has no POST; without
 * credentials, from an anonymous GET.
 */
import { RegistryError } from '../errors.ts';
import { discardBody } from './body.ts';
import type { CredentialLookup, Credentials } from './credentials.ts';
import { checkTransient, withRetries, type RetryPolicy } from './retry.ts';
import type { HttpResponse, Transport } from './transport.ts';

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

/** Tokens without expires_in live 60 s (the distribution spec's default). */
const DEFAULT_TOKEN_LIFETIME_S = 60;
/** Renew a little early (at most 10 s, at most a quarter of the lifetime) so a token does not expire between check and use. */
const TOKEN_RENEWAL_MARGIN_MS = 10_000;
/** OAuth2 client_id for the POST flow; realms use it only for their logs. */
const CLIENT_ID = 'rampack';
/**
 * Answers to the OAuth2 POST that mean "this realm has no POST flow" (404 on
 * GCR, 401 on Artifactory, 400 on ACR, 405 elsewhere): retry with a GET.
 */
const NO_OAUTH_POST_STATUSES = new Set([400, 401, 404, 405]);

export interface AuthorizerOptions {
  /** Registry as users name it, for credentials and messages. */
  registry: string;
  repository: string;
  lookup: CredentialLookup;
  userAgent: string;
  retry: RetryPolicy;
  transport: Transport;
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
      return credentials?.password ? `Basic ${basic(credentials)}` : undefined;
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

  /** The challenge's realm, service and scopes (a challenge may list several, space-separated). */
  private tokenRequest(): { realm: URL; service?: string; scopes: string[] } {
    const { realm, service } = this.challenge!.params;
    if (!realm) throw new RegistryError(`registry ${this.options.registry} sent a Bearer challenge without a realm`);
    return { realm: new URL(realm), service, scopes: this.scope.split(' ').filter(Boolean) };
  }

  private async fetchToken(): Promise<Token> {
    const request = this.tokenRequest();
    const credentials = await this.lookupCredentials();
    const what = `getting a token for ${this.options.repository} from ${request.realm.origin}`;
    let response = credentials ? await this.postForToken(request, credentials, what) : undefined;
    if (!response || (NO_OAUTH_POST_STATUSES.has(response.status) && !credentials?.identityToken)) {
      discardBody(response);
      response = await this.getToken(request, credentials, what);
    }
    if (response.status === 401 || response.status === 403) {
      discardBody(response);
      throw this.denied(credentials, response.status);
    }
    if (!response.ok) {
      discardBody(response);
      throw new RegistryError(`${what} failed: HTTP ${response.status}`, { hint: TOKEN_HINT, status: response.status });
    }
    return parseToken(await response.text(), what);
  }

  /** The OAuth2 flow: POST grant_type=password or refresh_token, secrets in the form body. */
  private postForToken(request: { realm: URL; service?: string; scopes: string[] }, credentials: Credentials, what: string): Promise<HttpResponse> {
    const form = new URLSearchParams({ client_id: CLIENT_ID });
    if (request.service) form.set('service', request.service);
    form.set('scope', request.scopes.join(' '));
    if (credentials.identityToken) {
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', credentials.identityToken);
    } else {
      form.set('grant_type', 'password');
      form.set('username', credentials.username);
      form.set('password', credentials.password);
    }
    const headers = { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': this.options.userAgent };
    return this.sendWithRetries(request.realm, { method: 'POST', headers, body: form.toString() }, what);
  }

  /** The classic flow: GET realm?service=..&scope=.. with Basic credentials, or anonymously. */
  private getToken(request: { realm: URL; service?: string; scopes: string[] }, credentials: Credentials | undefined, what: string): Promise<HttpResponse> {
    const url = new URL(request.realm);
    if (request.service) url.searchParams.set('service', request.service);
    for (const scope of request.scopes) url.searchParams.append('scope', scope);
    const headers: Record<string, string> = { 'user-agent': this.options.userAgent };
    if (credentials?.password) headers.authorization = `Basic ${basic(credentials)}`;
    return this.sendWithRetries(url, { headers }, what);
  }

  private sendWithRetries(url: URL, init: Parameters<Transport['send']>[1], what: string): Promise<HttpResponse> {
    return withRetries(this.options.retry, { what, hint: TOKEN_HINT }, async () => checkTransient(await this.options.transport.send(url, init), url.origin));
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

const TOKEN_HINT = 'check that the registry and its token service are reachable, then retry';

function parseToken(text: string, what: string): Token {
  let body: { token?: string; access_token?: string; expires_in?: number };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    throw new RegistryError(`${what}: the answer is not JSON`);
  }
  const value = body.token || body.access_token;
  if (!value) throw new RegistryError(`${what}: the answer holds no token`);
  const lifetimeMs = (Number(body.expires_in) > 0 ? Number(body.expires_in) : DEFAULT_TOKEN_LIFETIME_S) * 1000;
  return { value, expiresAt: Date.now() + lifetimeMs - Math.min(TOKEN_RENEWAL_MARGIN_MS, lifetimeMs / 4) };
}

function basic(credentials: Credentials): string {
  return Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64');
}
