/**
 * The manifest the runtime reads at startup to find an initramfs:
 * out/manifest.json. docs/manifest.md describes it; schemaVersion changes
 * only when a reader would misread the new form.
 */
import { readFile } from 'node:fs/promises';
import type { Compression } from '../compress/index.ts';
import { InputError } from '../errors.ts';
import type { Arch } from '../image/source.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { TOOL_VERSION } from '../version.ts';

export const MANIFEST_SCHEMA_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';

export interface ManifestImage {
  language: string;
  version: string;
  default: boolean;
  arch: Arch;
  /** File name relative to the manifest. */
  file: string;
  sha256: string;
  size: number;
  compression: Compression;
  uncompressedSize: number;
  source: {
    reference: string;
    manifestDigest: string;
    indexDigest?: string;
    configDigest: string;
  };
  agent: { sha256: string };
  env: string[];
}

export interface Manifest {
  schemaVersion: number;
  generator: { name: 'rampack'; version: string };
  images: ManifestImage[];
}

function imageKey(image: Pick<ManifestImage, 'language' | 'version' | 'arch'>): string {
  return `${image.language}\0${image.version}\0${image.arch}`;
}

function compareImages(a: ManifestImage, b: ManifestImage): number {
  return imageKey(a) < imageKey(b) ? -1 : imageKey(a) > imageKey(b) ? 1 : 0;
}

export function emptyManifest(): Manifest {
  return { schemaVersion: MANIFEST_SCHEMA_VERSION, generator: { name: 'rampack', version: TOOL_VERSION }, images: [] };
}

/** Reads a manifest; a missing file is an empty manifest. */
export async function readManifest(path: string): Promise<Manifest> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return emptyManifest();
    throw error;
  }
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text) as Manifest;
  } catch (error) {
    throw new InputError(`manifest ${path} is not valid JSON: ${(error as Error).message}`, { hint: 'remove it or restore it' });
  }
  if (manifest.schemaVersion !== MANIFEST_SCHEMA_VERSION || !Array.isArray(manifest.images)) {
    throw new InputError(`manifest ${path} has schemaVersion ${String(manifest.schemaVersion)}; this rampack writes ${MANIFEST_SCHEMA_VERSION}`, {
      hint: 'write to another --out directory or remove the old manifest',
    });
  }
  return manifest;
}

/**
 * Adds images to a manifest, replacing any with the same language, version
 * and arch. A new default for a language and arch takes the flag from the old
 * one. The result is sorted, so equal inputs give equal bytes.
 */
export function mergeImages(manifest: Manifest, images: readonly ManifestImage[]): Manifest {
  const byKey = new Map(manifest.images.map((image) => [imageKey(image), image]));
  for (const image of images) {
    if (image.default) {
      for (const [key, other] of byKey) {
        if (other.language === image.language && other.arch === image.arch && other.default) {
          byKey.set(key, { ...other, default: false });
        }
      }
    }
    byKey.set(imageKey(image), image);
  }
  return { ...emptyManifest(), images: [...byKey.values()].sort(compareImages) };
}

export function serializeManifest(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** Writes atomically, and not at all when the bytes would not change. */
export async function writeManifest(path: string, manifest: Manifest): Promise<boolean> {
  const text = serializeManifest(manifest);
  const current = await readFile(path, 'utf8').catch(() => undefined);
  if (current === text) return false;
  await writeFileAtomically(path, text);
  return true;
}
