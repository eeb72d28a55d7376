/**
 * Registry mirrors: pulls of `docker.io/library/x` can go to
 * `http://127.0.0.1:5000` first (`--registry-mirror docker.io=URL`, or
 * `registryMirrors` in rampack's config file). A mirror that lacks the image,
 * fails or cannot be reached is left for the next one, and finally for the
 * registry itself; whatever serves it, the image keeps its canonical reference,
 * and every document and blob is verified against its digest as usual.
 */
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { InputError, RampackError, UsageError } from '../errors.ts';
import { isLoopbackRegistry, type ImageReference } from '../oci/reference.ts';
import type { ContentStore } from '../oci/content.ts';
import type { Descriptor, FetchedManifest } from '../oci/types.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { openRegistryStore, type RegistryOptions } from './store.ts';

/** Registry ("docker.io", "ghcr.io", "localhost:5000") -> mirror origins, in the order they are tried. */
export type RegistryMirrors = ReadonlyMap<string, readonly string[]>;

/** A dead mirror should cost little before the registry itself is asked. */
const MIRROR_MAX_ATTEMPTS = 2;
const REGISTRY_NAME = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[a-f0-9:]+\])(?::\d+)?$/;
const DOCKER_HUB_ALIASES = new Set(['index.docker.io', 'registry-1.docker.io']);
const CONFIG_KEYS = new Set(['registryMirrors']);

/** A registry as image references name it: lowercase, Docker Hub's aliases folded into "docker.io". */
function registryKey(text: string, where: string): string {
  const name = text.trim().toLowerCase();
  if (!REGISTRY_NAME.test(name)) {
    throw new UsageError(`${where}: "${text}" is not a registry name (HOST[:PORT], e.g. docker.io or ghcr.io)`);
  }
  return DOCKER_HUB_ALIASES.has(name) ? 'docker.io' : name;
}

/** A mirror URL reduced to its origin. */
function mirrorOrigin(text: string, where: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`${where}: mirror "${text}" is not a URL`, { hint: 'write it as http://127.0.0.1:5000 or https://mirror.example.com' });
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash || url.username || url.password) {
    throw new UsageError(`${where}: mirror "${text}" must be a bare origin (scheme://host[:port]), without path, query or credentials`, {
      hint: 'credentials for a mirror come from --username or ~/.docker/config.json, under the mirror host',
    });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`${where}: mirror "${text}" must be an http:// or https:// URL`);
  return url.origin;
}

/** Parses one `--registry-mirror REGISTRY=URL`. */
export function parseMirrorFlag(text: string): [registry: string, origin: string] {
  const equals = text.indexOf('=');
  if (equals <= 0) {
    throw new UsageError(`--registry-mirror takes REGISTRY=URL, not "${text}"`, { hint: 'e.g. --registry-mirror docker.io=http://127.0.0.1:5000' });
  }
  const where = `--registry-mirror ${text}`;
  return [registryKey(text.slice(0, equals), where), mirrorOrigin(text.slice(equals + 1), where)];
}

/** Mirrors given by flags; several flags for one registry are tried in the order given. */
export function mirrorsFromFlags(flags: readonly string[]): RegistryMirrors {
  const mirrors = new Map<string, string[]>();
  for (const [registry, origin] of flags.map(parseMirrorFlag)) mirrors.set(registry, [...(mirrors.get(registry) ?? []), origin]);
  return mirrors;
}

/** `$XDG_CONFIG_HOME/rampack/config.yaml`, else `~/.config/rampack/config.yaml`. */
export function defaultConfigPath(): string {
  const xdg = process.env.XDG_CONFIG_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config'), 'rampack', 'config.yaml');
}

function configMirrors(document: unknown, file: string): RegistryMirrors {
  if (document === null || document === undefined) return new Map();
  if (typeof document !== 'object' || Array.isArray(document)) throw new InputError(`config file ${file} is not a YAML mapping`);
  const unknown = Object.keys(document).filter((key) => !CONFIG_KEYS.has(key));
  if (unknown.length > 0) {
    throw new InputError(`config file ${file}: unknown key ${unknown.map((key) => `"${key}"`).join(', ')}`, { hint: `known keys: ${[...CONFIG_KEYS].join(', ')}` });
  }
  const section = (document as { registryMirrors?: unknown }).registryMirrors ?? {};
  if (typeof section !== 'object' || section === null || Array.isArray(section)) {
    throw new InputError(`config file ${file}: registryMirrors must map registry names to lists of URLs`, {
      hint: 'e.g.\nregistryMirrors:\n  docker.io: [http://127.0.0.1:5000]',
    });
  }
  const mirrors = new Map<string, string[]>();
  for (const [registry, urls] of Object.entries(section)) {
    const where = `config file ${file}, registryMirrors["${registry}"]`;
    if (!Array.isArray(urls) || urls.some((url) => typeof url !== 'string')) throw new InputError(`${where} must be a list of URLs`);
    try {
      mirrors.set(registryKey(registry, where), (urls as string[]).map((url) => mirrorOrigin(url, where)));
    } catch (error) {
      // A bad file is bad input, not a bad command line.
      if (error instanceof UsageError) throw new InputError(error.message, { hint: error.hint });
      throw error;
    }
  }
  return mirrors;
}

/**
 * The mirrors of rampack's config file: `file` if given (it must exist), else
 * the default path if it exists.
 */
export async function loadConfigMirrors(file?: string): Promise<RegistryMirrors> {
  const path = file ?? defaultConfigPath();
  let text: string;
  try {
    text = await readInputText(path, 'config file', INPUT_FILE_LIMITS.config);
  } catch (error) {
    if (file === undefined && isMissingFile(error)) return new Map();
    throw error;
  }
  // Loaded only when there is a config file to parse.
  const { parse: parseYaml } = await import('yaml');
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new InputError(`config file ${path} is not valid YAML: ${(error as Error).message}`);
  }
  return configMirrors(document, path);
}

/** Flags win: a registry named by --registry-mirror ignores the config file's mirrors for it. */
export function mergeMirrors(fromConfig: RegistryMirrors, fromFlags: RegistryMirrors): RegistryMirrors {
  return new Map([...fromConfig, ...fromFlags]);
}

/** The same repository, tag and digest on a mirror's host. */
function onMirror(image: ImageReference, origin: string): ImageReference {
  const host = new URL(origin).host;
  const text = `${host}/${image.repository}${image.tag ? `:${image.tag}` : ''}${image.digest ? `@${image.digest}` : ''}`;
  return { registry: host, host, repository: image.repository, tag: image.tag, digest: image.digest, toString: () => text };
}

interface Source {
  /** "mirror http://127.0.0.1:5000" or "registry docker.io", for the log. */
  name: string;
  store: ContentStore;
}

/**
 * A registry image behind its mirrors. Sources are tried in order; one that
 * fails is dropped for the rest of the build (so a mirror missing the image
 * is asked once), and the registry's own error is the one reported.
 */
export class MirroredStore implements ContentStore {
  readonly reference: string;
  private readonly sources: readonly Source[];
  private readonly log: Logger;
  private current = 0;

  constructor(reference: string, sources: readonly Source[], log: Logger) {
    this.reference = reference;
    this.sources = sources;
    this.log = log;
  }

  fetchRootManifest(): Promise<FetchedManifest> {
    return this.fromFirstWorking((store) => store.fetchRootManifest());
  }

  fetchManifest(descriptor: Descriptor): Promise<FetchedManifest> {
    return this.fromFirstWorking((store) => store.fetchManifest(descriptor));
  }

  fetchBlob(descriptor: Descriptor): Promise<Buffer> {
    return this.fromFirstWorking((store) => store.fetchBlob(descriptor));
  }

  blobPath(descriptor: Descriptor): Promise<string> {
    return this.fromFirstWorking((store) => store.blobPath(descriptor));
  }

  private async fromFirstWorking<T>(operation: (store: ContentStore) => Promise<T>): Promise<T> {
    for (;;) {
      const index = this.current;
      const source = this.sources[index]!;
      try {
        return await operation(source.store);
      } catch (error) {
        if (index === this.sources.length - 1 || !(error instanceof RampackError)) throw error;
        // Another operation running concurrently may have moved on already.
        if (this.current === index) {
          this.current = index + 1;
          this.log.info(`${source.name} failed for ${this.reference} (${error.message}); trying ${this.sources[index + 1]!.name}`);
        }
      }
    }
  }
}

/**
 * Options for a mirror's store: few attempts, and an http:// URL counts as
 * trusting that host with plain HTTP, like --insecure-registry.
 */
function mirrorOptions(origin: string, options: RegistryOptions): RegistryOptions {
  const { protocol, host } = new URL(origin);
  const maxAttempts = Math.min(options.maxAttempts ?? MIRROR_MAX_ATTEMPTS, MIRROR_MAX_ATTEMPTS);
  if (protocol === 'https:' || isLoopbackRegistry(host)) return { ...options, maxAttempts };
  return { ...options, maxAttempts, insecureRegistries: [...(options.insecureRegistries ?? []), host] };
}

/** A store for `image` that asks `mirrors` (origins) before the image's own registry. */
export function openMirroredStore(image: ImageReference, mirrors: readonly string[], options: RegistryOptions): ContentStore {
  const sources: Source[] = [
    ...mirrors.map((origin) => ({ name: `mirror ${origin}`, store: openRegistryStore(onMirror(image, origin), mirrorOptions(origin, options)) })),
    { name: `registry ${image.registry}`, store: openRegistryStore(image, options) },
  ];
  return new MirroredStore(image.toString(), sources, options.log ?? silentLogger);
}
