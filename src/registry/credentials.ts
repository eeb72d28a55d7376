/**
 * Where registry credentials come from, first match wins:
 *   1. --username/--password-stdin;
 *   2. config.json `credHelpers[host]`: `docker-credential-<name> get`;
 *   3. config.json `credsStore`: the default helper, the same way;
 *   4. config.json `auths[host]`: `auth` (base64 "user:password") or `identitytoken`.
 * config.json is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
 */
import { execFile } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError, UsageError } from '../errors.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';

export interface Credentials {
  /** Empty for an identity token. */
  readonly username: string;
  /** Empty for an identity token. */
  readonly password: string;
  /** An OAuth2 refresh token (`identitytoken`, or a helper's "<token>" user): exchanged at the token realm, never sent as Basic. */
  readonly identityToken?: string;
  /** Where they came from ("--username", a config file, a helper), for messages; never the secret. */
  readonly source: string;
}

/** Finds the credentials for a registry ("docker.io", "ghcr.io", "localhost:5000"), if any. */
export type CredentialLookup = (registry: string) => Promise<Credentials | undefined>;

export interface CredentialOptions {
  username?: string;
  password?: string;
  /** Directory holding config.json; default `$DOCKER_CONFIG`, else `~/.docker`. */
  dockerConfigDir?: string;
}

const DOCKER_HUB_KEYS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
/** The key Docker stores Docker Hub credentials under, and the server URL its helpers know it by. */
const DOCKER_HUB_SERVER = 'https://index.docker.io/v1/';
/** Helpers answer "<token>" as the user name when the secret is an identity token. */
const IDENTITY_TOKEN_USER = '<token>';
const HELPER_TIMEOUT_MS = 30_000;

/** config.json keys are "host", "https://host" or "https://index.docker.io/v1/": compare hosts only. */
function configKeyRegistry(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//i, '').split('/')[0]!.toLowerCase();
  return DOCKER_HUB_KEYS.has(host) ? 'docker.io' : host;
}

interface DockerConfig {
  auths?: Record<string, { auth?: string; identitytoken?: string }>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

async function readDockerConfig(file: string): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    text = await readInputText(file, 'Docker config', INPUT_FILE_LIMITS.config);
  } catch (error) {
    if (isMissingFile(error)) return undefined;
    throw error;
  }
  try {
    return JSON.parse(text) as DockerConfig;
  } catch {
    throw new InputError(`Docker config ${file} is not valid JSON`, { hint: 'fix the file or point DOCKER_CONFIG elsewhere' });
  }
}

function findEntry<T>(entries: Record<string, T> | undefined, registry: string): [string, T] | undefined {
  const wanted = configKeyRegistry(registry);
  return Object.entries(entries ?? {}).find(([key]) => configKeyRegistry(key) === wanted);
}

/** auths[KEY].auth = base64("user:password"), or auths[KEY].identitytoken. */
function authsCredentials(file: string, config: DockerConfig, registry: string): Credentials | undefined {
  const match = findEntry(config.auths, registry);
  if (!match) return undefined;
  const [key, entry] = match;
  if (entry?.identitytoken) return { username: '', password: '', identityToken: entry.identitytoken, source: file };
  if (!entry?.auth) return undefined;
  const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) {
    throw new InputError(`Docker config ${file}: auths["${key}"].auth is not base64 of "user:password"`, {
      hint: `log in again with \`docker login ${registry}\``,
    });
  }
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), source: file };
}

/** The server URL a helper knows the registry by: Docker Hub's legacy URL, else the host. */
function helperServerUrl(registry: string): string {
  return configKeyRegistry(registry) === 'docker.io' ? DOCKER_HUB_SERVER : registry;
}

/**
 * Runs `docker-credential-<helper> get` with the server URL on stdin. Not
 * found is exit 1 with "credentials not found" on stdout. Neither stdout nor
 * stderr reaches messages otherwise: they may hold the secret.
 */
export function runCredentialHelper(helper: string, registry: string, configFile: string): Promise<Credentials | undefined> {
  const program = `docker-credential-${helper}`;
  const source = `${program} (from ${configFile})`;
  return new Promise((resolve, reject) => {
    const child = execFile(program, ['get'], { timeout: HELPER_TIMEOUT_MS, maxBuffer: 1024 * 1024 }, (error, stdout) => {
      if (error && /credentials not found/i.test(stdout)) return resolve(undefined);
      if (error) {
        const why = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'it is not on PATH' : error.killed ? 'it timed out' : `it exited with code ${String(error.code)}`;
        return reject(new InputError(`cannot get credentials for ${registry} from ${source}: ${why}`, {
          hint: `install ${program}, or remove it from ${configFile}`,
        }));
      }
      try {
        const answer = JSON.parse(stdout) as { Username?: string; Secret?: string };
        if (!answer.Secret) return resolve(undefined);
        if (answer.Username === IDENTITY_TOKEN_USER) return resolve({ username: '', password: '', identityToken: answer.Secret, source });
        resolve({ username: answer.Username ?? '', password: answer.Secret, source });
      } catch {
        reject(new InputError(`${source} did not answer JSON {"Username","Secret"} for ${registry}`));
      }
    });
    child.stdin?.end(helperServerUrl(registry));
  });
}

/** Credentials for `registry` from config.json in `configDir`: its helpers first, then `auths`. */
export async function dockerConfigCredentials(configDir: string, registry: string): Promise<Credentials | undefined> {
  const file = join(configDir, 'config.json');
  const config = await readDockerConfig(file);
  if (!config) return undefined;
  const helper = findEntry(config.credHelpers, registry)?.[1] ?? config.credsStore;
  const fromHelper = helper ? await runCredentialHelper(helper, registry, file) : undefined;
  return fromHelper ?? authsCredentials(file, config, registry);
}

export function defaultDockerConfigDir(): string {
  return process.env.DOCKER_CONFIG || join(homedir(), '.docker');
}

/** Explicit credentials, else Docker's config.json. */
export function credentialLookup(options: CredentialOptions): CredentialLookup {
  const { username, password } = options;
  if ((username === undefined) !== (password === undefined)) {
    throw new UsageError('registry credentials need both a user name and a password', {
      hint: 'pass --username together with --password-stdin',
    });
  }
  if (username !== undefined && password !== undefined) {
    const explicit: Credentials = { username, password, source: '--username/--password-stdin' };
    return async () => explicit;
  }
  const configDir = options.dockerConfigDir ?? defaultDockerConfigDir();
  return (registry) => dockerConfigCredentials(configDir, registry);
}
