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
 * field is the name a directory publish would give it.
 */
import type { KeyObject } from 'node:crypto';
import { UsageError } from '../errors.ts';
import type { ImageReference } from '../image/reference.ts';
import { MediaType, type Descriptor } from '../image/types.ts';
import { loadManifest, serializeManifest, type Manifest, type ManifestImage } from '../manifest/manifest.ts';
import { serializeSignature, signBytes } from '../manifest/sign.ts';
import { imageFilePath, verifyManifestFiles } from '../manifest/verify.ts';
import { openRegistryPusher, type BlobContent, type PushOptions } from '../registry/push.ts';
import { sha256Digest } from '../util/digest.ts';
import type { Logger } from '../util/log.ts';
import { publishedName } from './directory.ts';

export const ARTIFACT_TYPE = 'application/vnd.rampack.manifest.v1+json';
export const MANIFEST_MEDIA_TYPE = 'application/vnd.rampack.manifest.v1+json';
export const SIGNATURE_MEDIA_TYPE = 'application/vnd.rampack.manifest.signature.v1+json';
const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';
const EMPTY_JSON = Buffer.from('{}');
const TITLE = 'org.opencontainers.image.title';

export function initramfsMediaType(image: Pick<ManifestImage, 'compression'>): string {
  return `application/vnd.rampack.initramfs.v1.cpio${image.compression === 'none' ? '' : `+${image.compression}`}`;
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

export interface RegistryPublishOptions {
  signingKey?: KeyObject;
  push: PushOptions;
  log: Logger;
}

/** Pushes the artifact; returns the digest of its OCI manifest. */
export async function publishToRegistry(manifestPath: string, target: ImageReference, options: RegistryPublishOptions): Promise<string> {
  if (!target.tag || target.digest) throw new UsageError(`--registry needs a tag and no digest (HOST/REPO:TAG), not ${target.toString()}`);
  const { manifest } = await loadManifest(manifestPath);
  // The registry would refuse a blob whose digest does not match, but only after the upload: check first.
  await verifyManifestFiles(manifestPath, manifest.images);
  const published: Manifest = { ...manifest, images: manifest.images.map((image) => ({ ...image, file: publishedName(image) })) };
  const bytes = Buffer.from(serializeManifest(published));
  const layers = [documentLayer(MANIFEST_MEDIA_TYPE, 'manifest.json', bytes)];
  if (options.signingKey) {
    layers.push(documentLayer(SIGNATURE_MEDIA_TYPE, 'manifest.json.sig', Buffer.from(serializeSignature(signBytes(bytes, options.signingKey)))));
  }
  layers.push(...manifest.images.map((image) => initramfsLayer(manifestPath, image)));

  const pusher = openRegistryPusher(target, options.push);
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
  options.log.info(`published ${target.toString()} (${digest}): ${manifest.images.length} initramfs files`);
  return digest;
}
