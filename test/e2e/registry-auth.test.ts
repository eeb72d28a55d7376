/**
 * Registry access as real registries demand it, against real `docker-registry`
 * processes: token auth (the registry verifies JWTs from a test issuer),
 * Docker credential helpers and identity tokens, TLS with a custom CA or
 * without verification, HTTP(S) proxies, and no secret leaking into logs,
 * errors or redirected hosts.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { InputError, RampackError, RegistryError } from '../../src/errors.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import { openRegistryStore, type RegistryOptions } from '../../src/registry/store.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { writeOciLayout, type BuiltBlob, type ImageSpec } from '../helpers/oci-builder.ts';
import { pushLayout, startForwardProxy, startProxy, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';
import { makeCertificate, startTokenIssuer, type TokenIssuer, type TokenIssuerOptions } from '../helpers/token-issuer.ts';

const USER = 'builder';
const PASSWORD = 'T0ken-Pa55word';
const CREDS = `${USER}:${PASSWORD}`;
const REFRESH_TOKEN = 'refresh-7f3a9c';

let work: string;
let issuerOptions: TokenIssuerOptions;
let issuer: TokenIssuer;
let tokenRegistry: RunningRegistry;
let tlsRegistry: RunningRegistry;
let caFile: string;
let image: BuiltBlob;
const running: { stop(): Promise<void> }[] = [];

const spec: ImageSpec = {
  architecture: 'amd64',
  layers: [{ entries: [{ name: 'etc/', type: 'directory' }, { name: 'etc/os', content: 'token test\n' }], compression: 'gzip' }],
};

function storeFor(reference: string, options: Partial<RegistryOptions> = {}) {
  const emptyConfig = mkdtempSync(join(work, 'docker-config-'));
  return openRegistryStore(parseImageReference(reference), {
    cache: new Cache(mkdtempSync(join(work, 'cache-'))),
    maxAttempts: 2,
    retryBaseMs: 10,
    dockerConfigDir: emptyConfig,
    proxyEnv: {},
    ...options,
  });
}

/** Resolves the image and downloads its layers: every kind of authorised request. */
async function pull(reference: string, options: Partial<RegistryOptions> = {}): Promise<string> {
  const store = storeFor(reference, options);
  const resolved = await resolveImage(store, 'x86_64');
  await Promise.all(resolved.layers.map((layer) => store.blobPath(layer)));
  return resolved.manifestDigest;
}

async function caught(promise: Promise<unknown>): Promise<RampackError> {
  const error = await promise.then(() => undefined, (failure: unknown) => failure);
  expect(error).toBeInstanceOf(RampackError);
  return error as RampackError;
}

function dockerConfig(config: object): string {
  const dir = mkdtempSync(join(work, 'docker-config-'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-registry-auth-'));
  issuerOptions = { users: { [USER]: PASSWORD }, refreshTokens: { [REFRESH_TOKEN]: USER }, publicRepositories: ['public/app'] };
  issuer = await startTokenIssuer(work, issuerOptions);
  running.push(issuer);
  const tls = await makeCertificate(work, 'registry-tls', '127.0.0.1', ['IP:127.0.0.1']);
  caFile = tls.certificate;
  [tokenRegistry, tlsRegistry] = await Promise.all([
    startRegistry({ token: { realm: issuer.realm, service: issuer.service, issuer: issuer.issuer, rootCertBundle: issuer.rootCertBundle } }),
    startRegistry({ tls }),
  ]);
  running.push(tokenRegistry, tlsRegistry);
  image = await writeOciLayout(join(work, 'layout'), spec, '1.0');
  await Promise.all([
    pushLayout(join(work, 'layout'), '1.0', tokenRegistry.host, 'private/app', { creds: CREDS }),
    pushLayout(join(work, 'layout'), '1.0', tokenRegistry.host, 'public/app', { creds: CREDS }),
    pushLayout(join(work, 'layout'), '1.0', tlsRegistry.host, 'tls/app'),
  ]);
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('token auth against a registry that verifies the tokens', () => {
  const privateApp = () => `${tokenRegistry.host}/private/app:1.0`;

  it('gets one token per scope through the OAuth2 POST, the password only in the form', async () => {
    issuer.requests.length = 0;
    expect(await pull(privateApp(), { username: USER, password: PASSWORD })).toBe(image.digest);
    expect(issuer.requests).toHaveLength(1);
    expect(issuer.requests[0]).toMatchObject({
      method: 'POST',
      grantType: 'password',
      clientId: 'rampack',
      service: issuer.service,
      scopes: ['repository:private/app:pull'],
      account: USER,
      authorization: undefined,
    });
  });

  it('falls back to GET with Basic credentials when the realm has no POST', async () => {
    issuer.requests.length = 0;
    issuerOptions.noOAuthPost = true;
    try {
      expect(await pull(privateApp(), { username: USER, password: PASSWORD })).toBe(image.digest);
    } finally {
      issuerOptions.noOAuthPost = false;
    }
    expect(issuer.requests.map((request) => request.method)).toEqual(['POST', 'GET']);
    expect(issuer.requests[1]!.authorization).toBe(`Basic ${Buffer.from(CREDS).toString('base64')}`);
    expect(issuer.requests[1]!.account).toBe(USER);
  });

  it('pulls a public repository anonymously, and names the problem for a private one', async () => {
    issuer.requests.length = 0;
    expect(await pull(`${tokenRegistry.host}/public/app:1.0`)).toBe(image.digest);
    expect(issuer.requests.every((request) => request.method === 'GET' && request.authorization === undefined)).toBe(true);

    const denied = await caught(pull(privateApp()));
    expect(denied).toBeInstanceOf(RegistryError);
    expect(denied.message).toBe(`registry ${tokenRegistry.host} requires authentication for private/app (HTTP 401), or the repository does not exist`);
  });

  it('exchanges an identity token from config.json with grant_type=refresh_token', async () => {
    issuer.requests.length = 0;
    const configDir = dockerConfig({ auths: { [tokenRegistry.host]: { identitytoken: REFRESH_TOKEN } } });
    expect(await pull(privateApp(), { dockerConfigDir: configDir })).toBe(image.digest);
    expect(issuer.requests).toHaveLength(1);
    expect(issuer.requests[0]).toMatchObject({ method: 'POST', grantType: 'refresh_token', account: USER });
  });

  it('fetches a new token when the registry rejects the one it has', async () => {
    issuer.requests.length = 0;
    issuer.issueExpired(1);
    expect(await pull(privateApp(), { username: USER, password: PASSWORD })).toBe(image.digest);
    expect(issuer.requests).toHaveLength(2);
  });

  it('renews a token before it expires', async () => {
    issuer.requests.length = 0;
    issuerOptions.expiresIn = 2;
    try {
      const store = storeFor(privateApp(), { username: USER, password: PASSWORD });
      const resolved = await resolveImage(store, 'x86_64');
      expect(issuer.requests).toHaveLength(1);
      await sleep(1_600);
      await store.blobPath(resolved.layers[0]!);
    } finally {
      delete issuerOptions.expiresIn;
    }
    expect(issuer.requests).toHaveLength(2);
  });
});

describe('Docker credential helpers', () => {
  let bin: string;
  let answers: string;
  let asked: string;
  let savedPath: string | undefined;

  beforeAll(() => {
    bin = mkdtempSync(join(work, 'bin-'));
    answers = join(work, 'helper-answers.json');
    asked = join(work, 'helper-asked.log');
    // The protocol: `get`, the server URL on stdin, JSON on stdout; "not found" is exit 1.
    const script = `#!${process.execPath}
const fs = require('node:fs');
if (process.argv[2] !== 'get') process.exit(2);
const server = fs.readFileSync(0, 'utf8').trim();
fs.appendFileSync(${JSON.stringify(asked)}, server + '\\n');
const answer = JSON.parse(fs.readFileSync(${JSON.stringify(answers)}, 'utf8'))[server];
if (!answer) { console.log('credentials not found in native keychain'); process.exit(1); }
console.log(JSON.stringify(answer));
`;
    writeFileSync(join(bin, 'docker-credential-test'), script);
    chmodSync(join(bin, 'docker-credential-test'), 0o755);
    savedPath = process.env.PATH;
    process.env.PATH = `${bin}${delimiter}${savedPath}`;
  });

  afterAll(() => {
    process.env.PATH = savedPath;
  });

  function helperAnswers(map: Record<string, object>): void {
    writeFileSync(answers, JSON.stringify(map));
    writeFileSync(asked, '');
  }

  const privateApp = () => `${tokenRegistry.host}/private/app:1.0`;

  it('asks credsStore for the registry host', async () => {
    helperAnswers({ [tokenRegistry.host]: { ServerURL: tokenRegistry.host, Username: USER, Secret: PASSWORD } });
    expect(await pull(privateApp(), { dockerConfigDir: dockerConfig({ credsStore: 'test' }) })).toBe(image.digest);
    expect(readFileSync(asked, 'utf8')).toBe(`${tokenRegistry.host}\n`);
  });

  it('prefers credHelpers[host] over credsStore, and takes "<token>" as an identity token', async () => {
    helperAnswers({ [tokenRegistry.host]: { ServerURL: tokenRegistry.host, Username: '<token>', Secret: REFRESH_TOKEN } });
    issuer.requests.length = 0;
    const configDir = dockerConfig({ credsStore: 'absent', credHelpers: { [tokenRegistry.host]: 'test' } });
    expect(await pull(privateApp(), { dockerConfigDir: configDir })).toBe(image.digest);
    expect(issuer.requests[0]).toMatchObject({ method: 'POST', grantType: 'refresh_token', account: USER });
  });

  it('falls back to auths when the helper has nothing, and asks for Docker Hub by its legacy URL', async () => {
    helperAnswers({});
    const auth = Buffer.from(CREDS).toString('base64');
    const configDir = dockerConfig({ credsStore: 'test', auths: { [tokenRegistry.host]: { auth } } });
    expect(await pull(privateApp(), { dockerConfigDir: configDir })).toBe(image.digest);
    const { dockerConfigCredentials } = await import('../../src/registry/credentials.ts');
    expect(await dockerConfigCredentials(configDir, 'docker.io')).toBeUndefined();
    expect(readFileSync(asked, 'utf8').trim().split('\n')).toEqual([tokenRegistry.host, 'https://index.docker.io/v1/']);
  });

  it('names a helper that is not installed and the config that asks for it', async () => {
    const configDir = dockerConfig({ credsStore: 'absent' });
    const error = await caught(pull(privateApp(), { dockerConfigDir: configDir }));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toBe(`cannot get credentials for ${tokenRegistry.host} from docker-credential-absent (from ${join(configDir, 'config.json')}): it is not on PATH`);
  });
});

describe('TLS', () => {
  const tlsApp = () => `${tlsRegistry.host}/tls/app:1.0`;

  it('refuses a certificate it cannot verify, saying what to pass', async () => {
    const error = await caught(pull(tlsApp()));
    expect(error).toBeInstanceOf(RegistryError);
    expect(error.message).toContain(`the TLS certificate of ${tlsRegistry.host} is not trusted`);
    expect(error.hint).toContain('--ca-file');
    expect(error.hint).toContain(`--insecure-registry ${tlsRegistry.host}`);
  });

  it('trusts it with the CA file, or without verification for an insecure registry', async () => {
    expect(await pull(tlsApp(), { caFile })).toBe(image.digest);
    expect(await pull(tlsApp(), { insecureRegistries: [tlsRegistry.host] })).toBe(image.digest);
    expect(await pull(tlsApp(), { insecureRegistries: ['127.0.0.1'] })).toBe(image.digest);
  });

  it('reports a CA file that is not PEM', async () => {
    const bogus = join(work, 'bogus.pem');
    writeFileSync(bogus, 'not a certificate');
    const error = await caught(pull(tlsApp(), { caFile: bogus }));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain(`cannot use CA file ${bogus}`);
  });
});

describe('proxies from the environment', () => {
  it('sends plain HTTP through HTTP_PROXY and tunnels HTTPS through HTTPS_PROXY', async () => {
    const proxy = await startForwardProxy();
    running.push(proxy);
    const proxyEnv = { HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url };
    expect(await pull(`${tokenRegistry.host}/public/app:1.0`, { proxyEnv })).toBe(image.digest);
    expect(proxy.requests).toContain(`GET http://${tokenRegistry.host}/v2/public/app/manifests/1.0`);
    expect(proxy.requests).toContain(`GET ${issuer.realm}?service=${issuer.service}&scope=repository%3Apublic%2Fapp%3Apull`);

    proxy.requests.length = 0;
    expect(await pull(`${tlsRegistry.host}/tls/app:1.0`, { proxyEnv, caFile })).toBe(image.digest);
    expect(proxy.requests.length).toBeGreaterThan(0);
    expect(new Set(proxy.requests)).toEqual(new Set([`CONNECT ${tlsRegistry.host}`]));

    proxy.requests.length = 0;
    expect(await pull(`${tlsRegistry.host}/tls/app:1.0`, { proxyEnv: { ...proxyEnv, NO_PROXY: '127.0.0.1' }, caFile })).toBe(image.digest);
    expect(proxy.requests).toEqual([]);
  });
});

describe('the CLI with registry flags', () => {
  let agent: string;

  beforeAll(async () => {
    agent = await buildTestAgent('x86_64');
  });

  async function build(reference: string, extra: string[], options: { env?: NodeJS.ProcessEnv; input?: string } = {}) {
    const out = mkdtempSync(join(work, 'out-'));
    const args = ['build', '--image', reference, '--agent', agent, '--out', out, '--cache', mkdtempSync(join(work, 'cli-cache-')), '--verbose', ...extra];
    const env = { DOCKER_CONFIG: mkdtempSync(join(work, 'docker-config-')), RAMPACK_RETRY_BASE_MS: '10', ...options.env };
    return { ...(await runRampack(args, { env, input: options.input })), out };
  }

  it('takes --ca-file and --insecure-registry (build and inspect), and HTTPS_PROXY from the environment', async () => {
    const untrusted = await build(`${tlsRegistry.host}/tls/app:1.0`, []);
    expect(untrusted.code).toBe(4);
    expect(untrusted.stderr).toContain('is not trusted');
    expect((await build(`${tlsRegistry.host}/tls/app:1.0`, ['--ca-file', caFile])).code).toBe(0);
    expect((await build(`${tlsRegistry.host}/tls/app:1.0`, ['--insecure-registry', tlsRegistry.host])).code).toBe(0);
    const inspect = (extra: string[]) => runRampack(['inspect', `${tlsRegistry.host}/tls/app:1.0`, '--cache', mkdtempSync(join(work, 'cli-cache-')), ...extra]);
    expect((await inspect([])).code).toBe(4);
    expect((await inspect(['--ca-file', caFile])).code).toBe(0);

    const proxy = await startForwardProxy();
    running.push(proxy);
    const proxied = await build(`${tlsRegistry.host}/tls/app:1.0`, ['--ca-file', caFile], { env: { HTTPS_PROXY: proxy.url, NO_PROXY: '' } });
    expect(proxied.code).toBe(0);
    expect(proxy.requests).toContain(`CONNECT ${tlsRegistry.host}`);
  });

  it('publish takes the same flags: --ca-file, --insecure-registry, --username with --password-stdin', async () => {
    const built = await build(`${tlsRegistry.host}/tls/app:1.0`, ['--ca-file', caFile, '--language', 'app', '--version', '1.0']);
    expect(built.code, built.stderr).toBe(0);
    const manifest = join(built.out, 'manifest.json');
    const publish = (reference: string, extra: string[], input?: string) =>
      runRampack(['publish', manifest, '--registry', reference, ...extra], { env: { DOCKER_CONFIG: mkdtempSync(join(work, 'docker-config-')), RAMPACK_RETRY_BASE_MS: '10' }, input });

    const untrusted = await publish(`${tlsRegistry.host}/tls/initramfs:1`, []);
    expect(untrusted.code).toBe(4);
    expect(untrusted.stderr).toContain('is not trusted');
    expect((await publish(`${tlsRegistry.host}/tls/initramfs:1`, ['--ca-file', caFile])).code).toBe(0);
    expect((await publish(`${tlsRegistry.host}/tls/initramfs:2`, ['--insecure-registry', tlsRegistry.host])).code).toBe(0);

    const denied = await publish(`${tokenRegistry.host}/private/initramfs:1`, []);
    expect(denied.code).toBe(4);
    const allowed = await publish(`${tokenRegistry.host}/private/initramfs:1`, ['--username', USER, '--password-stdin'], `${PASSWORD}\n`);
    expect(allowed.code, allowed.stderr).toBe(0);
    expect(JSON.parse(allowed.stdout)).toMatchObject({ reference: `${tokenRegistry.host}/private/initramfs:1` });
    // Publishing again reads the tag's current manifest (with the same credentials) to raise its serial.
    const again = await publish(`${tokenRegistry.host}/private/initramfs:1`, ['--username', USER, '--password-stdin'], `${PASSWORD}\n`);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ serial: (JSON.parse(allowed.stdout) as { serial: number }).serial + 1 });

    const misplaced = await runRampack(['publish', manifest, '--to', join(work, 'site'), '--ca-file', caFile]);
    expect(misplaced.code).toBe(2);
    expect(misplaced.stderr).toContain('apply to --registry only');
  });

  it('keeps the password and tokens out of verbose logs, errors and redirected hosts', async () => {
    issuer.requests.length = 0;
    // Object storage signs requests its own way: here, a token the test gets itself.
    const realm = new URL(issuer.realm);
    realm.search = new URLSearchParams({ service: issuer.service, scope: 'repository:private/app:pull' }).toString();
    const signed = (await (await fetch(realm, { headers: { authorization: `Basic ${Buffer.from(CREDS).toString('base64')}` } })).json()) as { token: string };
    const storage = await startProxy(tokenRegistry.host, { upstreamAuthorization: `Bearer ${signed.token}` });
    const front = await startProxy(tokenRegistry.host, { redirectBlobsTo: storage.url });
    running.push(storage, front);
    const ok = await build(`${front.host}/private/app:1.0`, ['--username', USER, '--password-stdin'], { input: `${PASSWORD}\n` });
    expect(ok.code).toBe(0);
    const wrong = await build(`${front.host}/private/app:1.0`, ['--username', USER, '--password-stdin'], { input: `${PASSWORD}-wrong\n` });
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toContain(`refused access to private/app with the credentials from --username/--password-stdin`);

    const secrets = [PASSWORD, Buffer.from(CREDS).toString('base64'), ...issuer.requests.flatMap((request) => (request.issued ? [request.issued] : []))];
    expect(secrets.length).toBeGreaterThan(2);
    for (const secret of secrets) {
      expect(ok.stderr + ok.stdout + wrong.stderr + wrong.stdout).not.toContain(secret);
    }
    expect(front.requests.some((request) => request.authorization?.startsWith('Bearer '))).toBe(true);
    expect(storage.requests.length).toBeGreaterThan(0);
    expect(storage.requests.map((request) => request.authorization)).toEqual(storage.requests.map(() => undefined));
  });
});
