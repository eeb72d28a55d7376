/**
 * A token service for distribution's `auth: token`, written for the tests: it
 * checks Basic credentials (GET) or an OAuth2 form (POST, grant_type=password
 * or refresh_token) and issues JWTs signed with an EC key whose self-signed
 * certificate is the registry's rootcertbundle. The registry verifies every
 * token itself (issuer, audience = service, exp/nbf, signature through the
 * `x5c` chain, and the `access` claim), so tests exercise real token auth.
 *
 * Keys and certificates are made with the openssl CLI.
 */
import { execFile } from 'node:child_process';
import { randomBytes, sign, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface KeyPair {
  /** PEM files. */
  key: string;
  certificate: string;
}

/** A P-256 key and a self-signed certificate for `commonName` (with `altNames`, e.g. "IP:127.0.0.1"). */
export async function makeCertificate(dir: string, name: string, commonName: string, altNames: string[] = []): Promise<KeyPair> {
  const key = join(dir, `${name}.key`);
  const certificate = join(dir, `${name}.crt`);
  const args = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'];
  args.push('-keyout', key, '-out', certificate, '-subj', `/CN=${commonName}`);
  if (altNames.length > 0) args.push('-addext', `subjectAltName=${altNames.join(',')}`);
  await run('openssl', args);
  return { key, certificate };
}

export interface TokenRequest {
  method: string;
  /** "password" or "refresh_token" for POST; undefined for GET. */
  grantType?: string;
  clientId?: string;
  service?: string;
  scopes: string[];
  /** The account the request authenticated as, if any. */
  account?: string;
  authorization?: string;
  /** The token issued, if one was. */
  issued?: string;
}

export interface TokenIssuerOptions {
  users: Record<string, string>;
  /** Refresh tokens (config.json identitytoken) -> the account they stand for. */
  refreshTokens?: Record<string, string>;
  /** Repositories anyone may pull without credentials. */
  publicRepositories?: string[];
  /** Answer POST with 404, like a realm without the OAuth2 flow. */
  noOAuthPost?: boolean;
  /** expires_in of the tokens (default 300 s); read for each token, so a test may change it. */
  expiresIn?: number;
}

export interface TokenIssuer {
  realm: string;
  service: string;
  issuer: string;
  /** The certificate the registry trusts (its rootcertbundle). */
  rootCertBundle: string;
  requests: TokenRequest[];
  /** The next `count` tokens are already expired (beyond the registry's 60 s leeway) while claiming a long life. */
  issueExpired(count: number): void;
  stop(): Promise<void>;
}

const SERVICE = 'rampack-test-registry';
const ISSUER = 'rampack-test-issuer';

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

function parseScope(scope: string): { type: string; name: string; actions: string[] } | undefined {
  const match = scope.match(/^([a-z]+):(.+):([a-z*,]+)$/);
  return match ? { type: match[1]!, name: match[2]!, actions: match[3]!.split(',') } : undefined;
}

async function readForm(request: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

export async function startTokenIssuer(dir: string, options: TokenIssuerOptions): Promise<TokenIssuer> {
  const pair = await makeCertificate(dir, 'token-signer', ISSUER);
  const key = await readFile(pair.key);
  const x5c = [new X509Certificate(await readFile(pair.certificate)).raw.toString('base64')];
  const requests: TokenRequest[] = [];
  let expiredToIssue = 0;

  const jwt = (account: string | undefined, scopes: string[], expiresIn: number): string => {
    const now = Math.floor(Date.now() / 1000);
    const expired = expiredToIssue > 0 && expiredToIssue-- > 0;
    const access = scopes.flatMap((scope) => {
      const parsed = parseScope(scope);
      if (!parsed) return [];
      const allowed = account ? parsed.actions : parsed.actions.filter((action) => action === 'pull' && options.publicRepositories?.includes(parsed.name));
      return allowed.length > 0 ? [{ ...parsed, actions: allowed }] : [];
    });
    const claims = {
      iss: ISSUER,
      sub: account ?? '',
      aud: SERVICE,
      exp: expired ? now - 600 : now + expiresIn,
      nbf: expired ? now - 900 : now - 10,
      iat: expired ? now - 900 : now,
      jti: randomBytes(8).toString('hex'),
      access,
    };
    const signingInput = `${base64url(JSON.stringify({ typ: 'JWT', alg: 'ES256', x5c }))}.${base64url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
    return `${signingInput}.${base64url(signature)}`;
  };

  /** The account `request` authenticates as: undefined for anonymous, null for bad credentials. */
  const authenticate = (method: string, form: URLSearchParams, authorization: string | undefined): string | undefined | null => {
    if (method === 'POST') {
      const grant = form.get('grant_type');
      if (grant === 'password') return options.users[form.get('username') ?? ''] === form.get('password') ? form.get('username') : null;
      if (grant === 'refresh_token') return options.refreshTokens?.[form.get('refresh_token') ?? ''] ?? null;
      return null;
    }
    if (!authorization) return undefined;
    const [user, ...rest] = Buffer.from(authorization.replace(/^Basic /, ''), 'base64').toString('utf8').split(':');
    return options.users[user ?? ''] === rest.join(':') ? user : null;
  };

  const server = createServer((request, response) => {
    void (async () => {
      const url = new URL(request.url ?? '/', 'http://issuer');
      const method = request.method ?? 'GET';
      const form = method === 'POST' ? await readForm(request) : url.searchParams;
      const record: TokenRequest = {
        method,
        grantType: method === 'POST' ? (form.get('grant_type') ?? undefined) : undefined,
        clientId: form.get('client_id') ?? undefined,
        service: form.get('service') ?? undefined,
        scopes: method === 'POST' ? (form.get('scope') ?? '').split(' ').filter(Boolean) : form.getAll('scope'),
        authorization: request.headers.authorization,
      };
      requests.push(record);
      if (method === 'POST' && options.noOAuthPost) return void response.writeHead(404).end('404 page not found');
      const account = authenticate(method, form, request.headers.authorization);
      if (account === null) {
        response.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
        return;
      }
      record.account = account;
      const expiresIn = options.expiresIn ?? 300;
      record.issued = jwt(account, record.scopes, expiresIn);
      const body = { token: record.issued, access_token: record.issued, expires_in: expiresIn, issued_at: new Date().toISOString() };
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    })();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const realm = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  return {
    realm,
    service: SERVICE,
    issuer: ISSUER,
    rootCertBundle: pair.certificate,
    requests,
    issueExpired: (count) => void (expiredToIssue = count),
    stop: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
