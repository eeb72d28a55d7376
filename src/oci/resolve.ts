import { InputError, VerificationError } from '../errors.ts';
import { sha256Digest } from '../util/digest.ts';
import { checkConfigArch, selectPlatform } from './platform.ts';
import { checkDescriptor, checkDescriptors, isRecord, parseJsonObject } from './validate.ts';
import type { Arch, ContentStore, ResolvedImage } from './content.ts';
import { MediaType, type Descriptor, type FetchedManifest, type ImageConfig, type ImageIndex, type ImageManifest } from './types.ts';

const INDEX_TYPES = new Set<string>([MediaType.ociIndex, MediaType.dockerManifestList]);
const MANIFEST_TYPES = new Set<string>([MediaType.ociManifest, MediaType.dockerManifest]);
/** Indexes followed before an image manifest must come (the root index and nested ones). */
const MAX_INDEX_DEPTH = 4;

/** The media type a document declares, falling back on the one it was served with. */
function documentType(fetched: FetchedManifest, parsed: { mediaType?: string; manifests?: unknown }): string {
  if (parsed.mediaType) return parsed.mediaType;
  if (INDEX_TYPES.has(fetched.mediaType) || MANIFEST_TYPES.has(fetched.mediaType)) return fetched.mediaType;
  return Array.isArray(parsed.manifests) ? MediaType.ociIndex : MediaType.ociManifest;
}

function checkManifest(manifest: ImageManifest, what: string): void {
  if (manifest.schemaVersion !== 2) {
    throw new InputError(`${what} is not an OCI or Docker schema2 image manifest (schemaVersion 2 with config and layers)`);
  }
  checkDescriptor(manifest.config, `${what}: config`);
  checkDescriptors(manifest.layers, `${what}: layers`);
}

function checkConfig(config: ImageConfig, layers: readonly Descriptor[], what: string): void {
  const diffIds: unknown = isRecord(config.rootfs) ? config.rootfs.diff_ids : undefined;
  if (!Array.isArray(diffIds) || !diffIds.every((id) => typeof id === 'string')) {
    throw new InputError(`${what}: rootfs.diff_ids is missing or not a list of digests`);
  }
  if (config.config !== undefined && config.config !== null && !isRecord(config.config)) {
    throw new InputError(`${what}: "config" is not an object`);
  }
  if (diffIds.length !== layers.length) {
    throw new InputError(`${what}: rootfs.diff_ids has ${diffIds.length} entries but the manifest has ${layers.length} layers`);
  }
}

/** Resolves a store's reference to the image for `arch`, verifying the config's digest. */
export async function resolveImage(store: ContentStore, arch: Arch): Promise<ResolvedImage> {
  const root = await store.fetchRootManifest();
  let manifestFetched = root;
  let document = parseJsonObject<ImageManifest & ImageIndex>(root.bytes, `manifest of ${store.reference}`);
  let indexDigest: string | undefined;
  // An index may name another index for the platform (index -> index -> manifest): follow a few levels.
  for (let depth = 0; INDEX_TYPES.has(documentType(manifestFetched, document)); depth++) {
    const index = `index ${manifestFetched.digest} of ${store.reference}`;
    if (depth === MAX_INDEX_DEPTH) {
      throw new InputError(`${index} is an index nested ${depth} levels deep; rampack follows at most ${MAX_INDEX_DEPTH - 1} levels of nested indexes`);
    }
    indexDigest ??= root.digest;
    checkDescriptors(document.manifests, `${index}: manifests`);
    manifestFetched = await store.fetchManifest(selectPlatform(document.manifests, arch, store.reference));
    document = parseJsonObject<ImageManifest & ImageIndex>(manifestFetched.bytes, `manifest ${manifestFetched.digest} of ${store.reference}`);
  }
  const what = `image ${store.reference} (manifest ${manifestFetched.digest})`;
  const manifest: ImageManifest = document;
  checkManifest(manifest, what);
  const configBytes = await store.fetchBlob(manifest.config);
  if (sha256Digest(configBytes) !== manifest.config.digest) {
    throw new VerificationError(`config of ${what} does not match its digest ${manifest.config.digest}`);
  }
  const config = parseJsonObject<ImageConfig>(configBytes, `config of ${what}`);
  checkConfig(config, manifest.layers, `config of ${what}`);
  if (indexDigest === undefined) checkConfigArch(config.architecture, arch, store.reference);
  return {
    reference: store.reference,
    manifestDigest: manifestFetched.digest,
    indexDigest,
    manifest,
    configDigest: manifest.config.digest,
    config,
    layers: manifest.layers,
  };
}
