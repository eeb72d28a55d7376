/**
 * Registry image references, normalised the way Docker does it
 * (distribution/reference): "golang:1.22" is docker.io/library/golang:1.22.
 */
import { InputError } from '../errors.ts';

export interface ImageReference {
  /** Registry as users name it: "docker.io", "ghcr.io", "localhost:5000". */
  readonly registry: string;
  /** Host (and port) to connect to: "registry-1.docker.io" for docker.io, else `registry`. */
  readonly host: string;
  readonly repository: string;
  readonly tag?: string;
  /** When present it wins over the tag for fetching. */
  readonly digest?: string;
  /** Canonical "registry/repository:tag@digest". */
  toString(): string;
}

const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_HOST = 'registry-1.docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io']);
const DEFAULT_TAG = 'latest';
const MAX_NAME_LENGTH = 255;

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN_PATTERN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`);
const PATH_COMPONENT_PATTERN = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_PATTERN = /^[\w][\w.-]{0,127}$/;
const SHA256_DIGEST_PATTERN = /^sha256:[a-f0-9]{64}$/;

function invalid(text: string, problem: string): InputError {
  return new InputError(`image reference "${text}" is invalid: ${problem}`, {
    hint: 'write it as [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. golang:1.22 or ghcr.io/org/app:1.0',
  });
}

/** Docker's rule: the first component names a registry only if it looks like a host. */
function looksLikeRegistry(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || component !== component.toLowerCase();
}

function splitDigest(text: string, body: string): { name: string; digest?: string } {
  const at = body.indexOf('@');
  if (at < 0) return { name: body };
  const digest = body.slice(at + 1);
  if (!SHA256_DIGEST_PATTERN.test(digest)) {
    throw invalid(text, `digest "${digest}" is not sha256:<64 lowercase hex digits> (rampack supports sha256 only)`);
  }
  return { name: body.slice(0, at), digest };
}

function splitTag(text: string, name: string): { name: string; tag?: string } {
  const colon = name.lastIndexOf(':');
  if (colon < 0 || name.slice(colon + 1).includes('/')) return { name };
  const tag = name.slice(colon + 1);
  if (!TAG_PATTERN.test(tag)) {
    throw invalid(text, `tag "${tag}" must be 1-128 letters, digits, "_", "." or "-", not starting with "." or "-"`);
  }
  return { name: name.slice(0, colon), tag };
}

function splitRegistry(text: string, name: string): { registry: string; repository: string } {
  const slash = name.indexOf('/');
  if (slash < 0 || !looksLikeRegistry(name.slice(0, slash))) {
    return { registry: DOCKER_HUB, repository: name };
  }
  const registry = name.slice(0, slash);
  if (!DOMAIN_PATTERN.test(registry)) throw invalid(text, `registry "${registry}" is not a valid HOST[:PORT]`);
  return { registry: DOCKER_HUB_ALIASES.has(registry) ? DOCKER_HUB : registry, repository: name.slice(slash + 1) };
}

function checkRepository(text: string, repository: string): void {
  for (const component of repository.split('/')) {
    if (!PATH_COMPONENT_PATTERN.test(component)) {
      const problem = component !== component.toLowerCase() ? 'must be lowercase' : 'must be lowercase letters and digits separated by ".", "_", "__" or "-"';
      throw invalid(text, `repository component "${component}" ${problem}`);
    }
  }
}

export function parseImageReference(text: string): ImageReference {
  if (text.includes('://')) throw invalid(text, 'drop the URL scheme (http:// or https://)');
  const { name: nameWithTag, digest } = splitDigest(text, text);
  const { name, tag } = splitTag(text, nameWithTag);
  if (name === '') throw invalid(text, 'it names no repository');
  const { registry, repository: given } = splitRegistry(text, name);
  const repository = registry === DOCKER_HUB && !given.includes('/') ? `library/${given}` : given;
  checkRepository(text, repository);
  if (`${registry}/${repository}`.length > MAX_NAME_LENGTH) throw invalid(text, `the name is longer than ${MAX_NAME_LENGTH} characters`);
  const finalTag = tag ?? (digest ? undefined : DEFAULT_TAG);
  const canonical = `${registry}/${repository}${finalTag ? `:${finalTag}` : ''}${digest ? `@${digest}` : ''}`;
  return {
    registry,
    host: registry === DOCKER_HUB ? DOCKER_HUB_HOST : registry,
    repository,
    tag: finalTag,
    digest,
    toString: () => canonical,
  };
}

/** The host part of "host:port" or "[v6]:port". */
function hostname(hostAndPort: string): string {
  if (hostAndPort.startsWith('[')) return hostAndPort.slice(1, hostAndPort.indexOf(']'));
  const colon = hostAndPort.lastIndexOf(':');
  return colon < 0 ? hostAndPort : hostAndPort.slice(0, colon);
}

/** Loopback registries speak plain HTTP, as Docker assumes; all others HTTPS. */
export function isLoopbackRegistry(host: string): boolean {
  const name = hostname(host);
  return name === 'localhost' || name === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}
