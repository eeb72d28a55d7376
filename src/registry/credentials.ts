/**
 * Where registry credentials come from: explicit options first, then
 * Docker's config.json `auths`. A lookup is a chain of sources, so credential
 * helpers (`credsStore`, `credHelpers`) can join it as one more source.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError, UsageError } from '../errors.ts';

export interface Credentials {
  readonly username: string;
  readonly password: string;
  /** Where they came from ("--username", a config file), for messages; never the secret. */
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

/** config.json keys are "host", "https://host" or "https://index.docker.io/v1/": compare hosts only. */
function configKeyRegistry(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//i, '').split('/')[0]!.toLowerCase();
  return DOCKER_HUB_KEYS.has(host) ? 'docker.io' : host;
}

interface DockerConfig {
  auths?: Record<string, { auth?: string }>;
}

async function readDockerConfig(file: string): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read Docker config ${file}: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text) as DockerConfig;
  } catch {
    throw new InputError(`Docker config ${file} is not valid JSON`, { hint: 'fix the file or point DOCKER_CONFIG elsewhere' });
  }
}

/** Basic credentials stored by `docker login` in config.json: auths[KEY].auth = base64("user:password"). */
export async function dockerConfigCredentials(configDir: string, registry: string): Promise<Credentials | undefined> {
  const file = join(configDir, 'config.json');
  const config = await readDockerConfig(file);
  const wanted = configKeyRegistry(registry);
  const match = Object.entries(config?.auths ?? {}).find(([key, entry]) => configKeyRegistry(key) === wanted && entry?.auth);
  if (!match) return undefined;
  const [key, entry] = match;
  const decoded = Buffer.from(entry.auth!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) {
    throw new InputError(`Docker config ${file}: auths["${key}"].auth is not base64 of "user:password"`, {
      hint: `log in again with \`docker login ${registry}\``,
    });
  }
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), source: file };
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
