/**
 * What an image reference resolves to, without building: the platforms of an
 * index, and for each platform rampack can build (linux/amd64, linux/arm64)
 * its manifest, layers with sizes, and config. Only manifests and configs are
 * fetched, never layers.
 */
import { openContentStore, type SourceOptions } from '../sources/open.ts';
import { InputError } from '../errors.ts';
import { formatPlatform, platformEntries } from '../oci/platform.ts';
import { resolveImage } from '../oci/resolve.ts';
import { ARCHES, OCI_ARCH, type Arch, type ContentStore } from '../oci/content.ts';
import type { Descriptor, ImageIndex, ImageManifest } from '../oci/types.ts';

export interface LayerInfo {
  digest: string;
  mediaType: string;
  size: number;
}

export interface PlatformImage {
  arch: Arch;
  platform: string;
  manifestDigest: string;
  configDigest: string;
  created?: string;
  layers: LayerInfo[];
  /** Sum of the layers' (compressed) sizes. */
  size: number;
  env: string[];
  workingDir: string;
  entrypoint: string[];
  cmd: string[];
  user: string;
}

export interface ImageInspection {
  reference: string;
  /** Digest of the index, when the reference names one. */
  indexDigest?: string;
  /** Every platform the reference offers ("linux/amd64", ...). */
  platforms: string[];
  /** Details of the platforms rampack builds. */
  images: PlatformImage[];
}

interface RootDocument extends Partial<ImageManifest>, Partial<Pick<ImageIndex, 'manifests'>> {}

function parseRoot(bytes: Buffer, reference: string): RootDocument {
  try {
    return JSON.parse(bytes.toString('utf8')) as RootDocument;
  } catch (error) {
    throw new InputError(`manifest of ${reference} is not valid JSON: ${(error as Error).message}`);
  }
}

/** The platforms a single-platform manifest is for, read from its config. */
async function singlePlatform(store: ContentStore, config: Descriptor | undefined): Promise<string[]> {
  if (config === undefined) return [];
  let parsed: { os?: string; architecture?: string; variant?: string };
  try {
    parsed = JSON.parse((await store.fetchBlob(config)).toString('utf8')) as typeof parsed;
  } catch (error) {
    throw new InputError(`config ${config.digest} of ${store.reference} is not valid JSON: ${(error as Error).message}`);
  }
  return [formatPlatform({ os: parsed.os ?? 'linux', architecture: parsed.architecture ?? 'unknown', variant: parsed.variant })];
}

function buildableArches(platforms: readonly string[]): Arch[] {
  return ARCHES.filter((arch) => platforms.some((platform) => platform.startsWith(`linux/${OCI_ARCH[arch]}`)));
}

export async function inspectImage(reference: string, options: SourceOptions): Promise<ImageInspection> {
  const store = await openContentStore(reference, options);
  const root = await store.fetchRootManifest();
  const document = parseRoot(root.bytes, store.reference);
  const isIndex = Array.isArray(document.manifests);
  const platforms = isIndex ? platformEntries(document.manifests!).map((entry) => formatPlatform(entry.platform)) : await singlePlatform(store, document.config);
  const arches = buildableArches(platforms);
  if (arches.length === 0) {
    throw new InputError(`image ${store.reference} has no linux/amd64 or linux/arm64 image; it has: ${platforms.join(', ') || 'no platforms'}`);
  }
  const images: PlatformImage[] = [];
  for (const arch of arches) {
    const image = await resolveImage(store, arch);
    const config = image.config.config ?? {};
    images.push({
      arch,
      platform: formatPlatform({ os: image.config.os ?? 'linux', architecture: image.config.architecture ?? OCI_ARCH[arch], variant: image.config.variant }),
      manifestDigest: image.manifestDigest,
      configDigest: image.configDigest,
      created: image.config.created,
      layers: image.layers.map((layer) => ({ digest: layer.digest, mediaType: layer.mediaType, size: layer.size })),
      size: image.layers.reduce((sum, layer) => sum + layer.size, 0),
      env: config.Env ?? [],
      workingDir: config.WorkingDir || '/',
      entrypoint: config.Entrypoint ?? [],
      cmd: config.Cmd ?? [],
      user: config.User ?? '',
    });
  }
  return { reference: store.reference, ...(isIndex ? { indexDigest: root.digest } : {}), platforms, images };
}
