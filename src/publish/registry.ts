/**
 * `rampack publish --registry HOST/REPO:TAG`: the manifest and its files as
 * one OCI artifact (image-spec 1.1), so a runtime fetches both from the
 * registry it already trusts (docs/publishing.md):
 *
 *   artifactType  application/vnd.rampack.manifest.v1+json
 *   config        the empty descriptor ({})
 *   layers        manifest.json, manifest.json.sig (when signed), then one
 *                 layer per initramfs, annotated with language, version, arch
 *
 * Blobs go up first and the tag last, so the tag never names a partial
 * artifact. An initramfs is the blob `sha256:<image.sha256>`; its `file`
 * field is the name a directory publish would give it. Readers pick layers by
 * mediaType (artifactLayers), never by position, and treat annotations as
 * unsigned hints. The manifest's serial goes above the one the tag serves.
 */
import type { KeyObject } from 'node:crypto';
import { InputError, UsageError } from '../errors.ts';
import type { ImageReference } from '../oci/reference.ts';
import { MediaType, type Descriptor } from '../oci/types.ts';
import { nextFreshness, servedSerial } from '../manifest/freshness.ts';
import { loadManifest, serializeManifest, withFreshness, type Freshness, type ManifestImage } from '../manifest/manifest.ts';
import { serializeSignature, signBytes } from '../manifest/sign.ts';
import { imageFilePath, verifyManifestFiles } from '../manifest/verify.ts';
import { openRegistryPusher, type BlobContent, type PushOptions, type RegistryPusher } from '../registry/push.ts';
import { sha256Digest } from '../util/digest.ts';
import type { Logger } from '../util/log.ts';
import { publishedName } from './directory.ts';

export const ARTIFACT_TYPE = 'application/vnd.rampack.manifest.v1+json';
export const MANIFEST_MEDIA_TYPE = 'application/vnd.rampack.manifest.v1+json';
export const SIGNATURE_MEDIA_TYPE = 'application/vnd.rampack.manifest.signature.v1+json';
const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';
const EMPTY_JSON = Buffer.from('{}');
const TITLE = 'org.opencontainers.image.title';

const INITRAMFS_MEDIA_TYPE = 'application/vnd.rampack.initramfs.v1.cpio';

export function initramfsMediaType(image: Pick<ManifestImage, 'compression'>): string {
  return `${INITRAMFS_MEDIA_TYPE}${image.compression === 'none' ? '' : `+${image.compression}`}`;
}

interface Layer {
  descriptor: Descriptor;
  content: BlobContent;
}

function documentLayer(mediaType: string, title: string, bytes: Buffer): Layer {
  return { descriptor: { mediaType, digest: sha256Digest(bytes), size: bytes.length, annotations: { [TITLE]: title } }, content: { bytes } };
}

function initramfsLayer(manifestPath: string, image: ManifestImage): Layer {
  const annotations = {
    [TITLE]: publishedName(image),
    'dev.rampack.language': image.language,
    'dev.rampack.version': image.version,
    'dev.rampack.arch': image.arch,
    'dev.rampack.default': String(image.default),
  };
  const descriptor = { mediaType: initramfsMediaType(image), digest: `sha256:${image.sha256}`, size: image.size, annotations };
  return { descriptor, content: { path: imageFilePath(manifestPath, image) } };
}

/** The parts of a rampack artifact, picked by mediaType: layer order is not part of the contract. */
export interface ArtifactLayers {
  manifest: Descriptor;
  signature?: Descriptor;
  initramfs: Descriptor[];
}

export interface Artifact {
  artifactType?: string;
  layers?: Descriptor[];
}

/**
 * What a reader takes from a rampack artifact: exactly one manifest layer, at
 * most one signature layer, and the initramfs layers, each selected by its
 * mediaType. Annotations are unsigned hints and are not read here: the signed
 * manifest says which blob (by sha256) holds which image.
 */
export function artifactLayers(artifact: Artifact, what: string): ArtifactLayers {
  if (artifact.artifactType !== ARTIFACT_TYPE) {
    throw new InputError(`${what} is not a rampack artifact (artifactType ${artifact.artifactType ?? 'none'}, expected ${ARTIFACT_TYPE})`, {
      hint: 'publish to a tag of its own: rampack never replaces another kind of content',
    });
  }
  const layers = artifact.layers ?? [];
  const ofType = (mediaType: string) => layers.filter((layer) => layer.mediaType === mediaType);
  const [manifest, ...extraManifests] = ofType(MANIFEST_MEDIA_TYPE);
  const [signature, ...extraSignatures] = ofType(SIGNATURE_MEDIA_TYPE);
  if (!manifest || extraManifests.length > 0 || extraSignatures.length > 0) {
    throw new InputError(`${what} must hold one ${MANIFEST_MEDIA_TYPE} layer and at most one ${SIGNATURE_MEDIA_TYPE} layer`);
  }
  return { manifest, signature, initramfs: layers.filter((layer) => layer.mediaType.startsWith(INITRAMFS_MEDIA_TYPE)) };
}

/** The serial of the manifest the tag serves now, if any: the published one must go above it. */
async function servedSerialAt(pusher: RegistryPusher, tag: string): Promise<number | undefined> {
  const what = `${pusher.target.registry}/${pusher.target.repository}:${tag}`;
  const current = await pusher.fetchManifest(tag, MediaType.ociManifest);
  if (!current) return undefined;
  let artifact: Artifact;
  try {
    artifact = JSON.parse(current.toString('utf8')) as Artifact;
  } catch {
    throw new InputError(`${what} holds a manifest that is not JSON`, { hint: 'publish to another tag' });
  }
  const { manifest } = artifactLayers(artifact, what);
  return servedSerial((await pusher.fetchDocument(manifest)).toString('utf8'), `the manifest published at ${what}`);
}

export interface RegistryPublishOptions {
  /** Each key signs the published manifest. */
  signingKeys: readonly KeyObject[];
  /** `--expires`: how long the published manifest stays valid (default DEFAULT_VALIDITY when signed). */
  expires?: string;
  push: PushOptions;
  log: Logger;
  now?: Date;
}

export interface RegistryPublishResult extends Freshness {
  /** Digest of the pushed OCI manifest: pin the artifact as REPO@DIGEST. */
  digest: string;
}

/** Pushes the artifact, with a serial above the one the tag serves now. */
export async function publishToRegistry(manifestPath: string, target: ImageReference, options: RegistryPublishOptions): Promise<RegistryPublishResult> {
  if (!target.tag || target.digest) throw new UsageError(`--registry needs a tag and no digest (HOST/REPO:TAG), not ${target.toString()}`);
  const { manifest } = await loadManifest(manifestPath);
  // The registry would refuse a blob whose digest does not match, but only after the upload: check first.
  await verifyManifestFiles(manifestPath, manifest.images);
  const pusher = openRegistryPusher(target, options.push);
  const signed = options.signingKeys.length > 0;
  const freshness = nextFreshness([manifest.serial, await servedSerialAt(pusher, target.tag)], { expires: options.expires, signed, now: options.now ?? new Date() });
  const published = withFreshness({ ...manifest, images: manifest.images.map((image) => ({ ...image, file: publishedName(image) })) }, freshness);
  const bytes = Buffer.from(serializeManifest(published));
  const layers = [documentLayer(MANIFEST_MEDIA_TYPE, 'manifest.json', bytes)];
  if (signed) {
    layers.push(documentLayer(SIGNATURE_MEDIA_TYPE, 'manifest.json.sig', Buffer.from(serializeSignature(signBytes(bytes, options.signingKeys)))));
  }
  layers.push(...manifest.images.map((image) => initramfsLayer(manifestPath, image)));

  const config = { mediaType: EMPTY_MEDIA_TYPE, digest: sha256Digest(EMPTY_JSON), size: EMPTY_JSON.length };
  await pusher.pushBlob(config, { bytes: EMPTY_JSON });
  for (const layer of layers) {
    const result = await pusher.pushBlob(layer.descriptor, layer.content);
    options.log.info(`${layer.descriptor.annotations?.[TITLE]}: ${result}`);
  }
  const artifact = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    artifactType: ARTIFACT_TYPE,
    config,
    layers: layers.map((layer) => layer.descriptor),
  };
  const digest = await pusher.pushManifest(target.tag, Buffer.from(JSON.stringify(artifact)), MediaType.ociManifest);
  options.log.info(`published ${target.toString()} (serial ${freshness.serial}): ${manifest.images.length} initramfs files; pin it as ${pinnedReference(target, digest)}`);
  return { digest, ...freshness };
}

/** REGISTRY/REPO@DIGEST: the artifact exactly as pushed, whatever the tag points at later. */
export function pinnedReference(target: ImageReference, digest: string): string {
  return `${target.registry}/${target.repository}@${digest}`;
}
