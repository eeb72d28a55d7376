/**
 * The manifest the runtime reads at startup to find an initramfs:
 * out/manifest.json. schemas/manifest.schema.json is the contract and
 * docs/manifest.md explains it; schemaVersion changes only when a reader
 * would misread the new form.
 */
import { join } from 'node:path';
import type { Compression } from '../compress/index.ts';
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import { schemaProblems } from '../util/json-schema.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputFile, readInputText } from '../util/input-file.ts';
import { TOOL_VERSION } from '../version.ts';

export const MANIFEST_SCHEMA_VERSION = 2;
export const MANIFEST_FILE = 'manifest.json';

/** How the runtime must boot an entry (docs/runtime.md). */
export interface BootRequirements {
  /** Kernel parameters to pass before the runtime's own (console aside) and its "--" arguments. */
  cmdline: string;
  /** The smallest guest RAM, in MiB, at which the image boots with `cmdline` and runs a small workload. */
  minMemoryMiB: number;
  /** Oldest kernel release ("MAJOR.MINOR") with what the image needs. */
  minKernel: string;
  /** Kernel options the image needs, as "CONFIG_X=y". */
  kernelConfig: string[];
}

export interface ManifestImage {
  language: string;
  version: string;
  default: boolean;
  arch: Arch;
  /** "slim": the variant with only what the traced workload needs (docs/manifest.md); absent for the full image. */
  variant?: 'slim';
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
  boot: BootRequirements;
  /** The cell's input digest (src/recipe/plan.ts), in manifests merged from fragments. */
  inputDigest?: string;
}

export interface Manifest {
  schemaVersion: number;
  generator: { name: 'rampack'; version: string };
  /**
   * Monotonic number of this signed content (docs/manifest.md, "Freshness"):
   * set by `manifest sign` and `publish`, kept by builds so the next signing goes above it.
   */
  serial?: number;
  /** RFC 3339 UTC time after which readers refuse the manifest; set with the serial. */
  expires?: string;
  images: ManifestImage[];
}

function imageKey(image: Pick<ManifestImage, 'language' | 'version' | 'arch' | 'variant'>): string {
  return `${image.language}\0${image.version}\0${image.arch}\0${image.variant ?? ''}`;
}

/** Default versions are per language, arch and variant. */
function defaultKey(image: Pick<ManifestImage, 'language' | 'arch' | 'variant'>): string {
  return `${image.language}\0${image.arch}\0${image.variant ?? ''}`;
}

function compareImages(a: ManifestImage, b: ManifestImage): number {
  return imageKey(a) < imageKey(b) ? -1 : imageKey(a) > imageKey(b) ? 1 : 0;
}

export function emptyManifest(): Manifest {
  return { schemaVersion: MANIFEST_SCHEMA_VERSION, generator: { name: 'rampack', version: TOOL_VERSION }, images: [] };
}

/** What `manifest sign` and `publish` set on the top level (docs/manifest.md, "Freshness"). */
export interface Freshness {
  serial: number;
  expires?: string;
}

/** The manifest with this serial and expiry (none when `expires` is undefined), top-level fields before the images. */
export function withFreshness(manifest: Manifest, freshness: Freshness): Manifest {
  const { schemaVersion, generator, images } = manifest;
  return { schemaVersion, generator, serial: freshness.serial, ...(freshness.expires === undefined ? {} : { expires: freshness.expires }), images };
}

/** Parses and validates manifest text; `path` names it in errors. */
export async function parseManifest(text: string, path: string): Promise<Manifest> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(text) as Manifest;
  } catch (error) {
    throw new InputError(`manifest ${path} is not valid JSON: ${(error as Error).message}`, { hint: 'remove it or restore it' });
  }
  if (manifest?.schemaVersion !== MANIFEST_SCHEMA_VERSION) {
    throw new InputError(`manifest ${path} has schemaVersion ${String(manifest?.schemaVersion)}; this rampack writes ${MANIFEST_SCHEMA_VERSION}`, {
      hint: 'it was written by another rampack version: remove it and rebuild with this one (or build into another --out directory)',
    });
  }
  const problems = await schemaProblems('manifest.schema.json', manifest);
  if (problems.length > 0) {
    throw new InputError(`manifest ${path}: ${problems.join('; ')}`, { hint: 'see schemas/manifest.schema.json' });
  }
  return manifest;
}

/** Reads a manifest that must exist, with its exact bytes (what a signature covers). */
export async function loadManifest(path: string): Promise<{ manifest: Manifest; bytes: Buffer }> {
  const bytes = await readManifestBytes(path);
  return { manifest: await parseManifest(bytes.toString('utf8'), path), bytes };
}

/** The bytes of a manifest that must exist, unparsed: a signature is checked before they are read as JSON. */
export async function readManifestBytes(path: string): Promise<Buffer> {
  return readInputFile(path, 'manifest', INPUT_FILE_LIMITS.manifest);
}

/** Reads a manifest; a missing file is an empty manifest. */
export async function readManifest(path: string): Promise<Manifest> {
  let text: string;
  try {
    text = await readInputText(path, 'manifest', INPUT_FILE_LIMITS.manifest);
  } catch (error) {
    if (isMissingFile(error)) return emptyManifest();
    throw error;
  }
  return parseManifest(text, path);
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
        if (defaultKey(other) === defaultKey(image) && other.default) {
          byKey.set(key, { ...other, default: false });
        }
      }
    }
    byKey.set(imageKey(image), image);
  }
  const merged = { ...emptyManifest(), images: [...byKey.values()].sort(compareImages) };
  // The serial stays so the next `manifest sign` numbers the new content above it, never at it again;
  // `expires` goes: it belonged to a signature that no longer matches.
  return manifest.serial === undefined ? merged : withFreshness(merged, { serial: manifest.serial });
}

export function serializeManifest(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** Writes atomically, and not at all when the bytes would not change. */
export async function writeManifest(path: string, manifest: Manifest): Promise<boolean> {
  const text = serializeManifest(manifest);
  const current = await readInputText(path, 'manifest', INPUT_FILE_LIMITS.manifest).catch(() => undefined);
  if (current === text) return false;
  await writeFileAtomically(path, text);
  return true;
}

export const FRAGMENTS_DIR = 'fragments';

/** Where `rampack build --only KEY` writes its fragment: OUT/fragments/KEY.json (file names stay relative to OUT). */
export function fragmentPath(outDir: string, key: string): string {
  return join(outDir, FRAGMENTS_DIR, `${key}.json`);
}

function describeImage(image: ManifestImage): string {
  return `${image.language} ${image.version} ${image.arch}${image.variant ? ` ${image.variant}` : ''}`;
}

/**
 * Joins fragments (manifests of one or more cells) into one manifest. The
 * same cell in two fragments must be identical, and each language and arch
 * may have one default version: anything else is a conflict, named with
 * both fragments, rather than a silent choice.
 */
export function mergeFragments(fragments: ReadonlyArray<{ path: string; manifest: Manifest }>): Manifest {
  const cells = new Map<string, { image: ManifestImage; path: string }>();
  const defaults = new Map<string, { image: ManifestImage; path: string }>();
  for (const { path, manifest } of fragments) {
    for (const image of manifest.images) {
      const seen = cells.get(imageKey(image));
      if (seen && JSON.stringify(seen.image) !== JSON.stringify(image)) {
        throw new InputError(`fragments ${seen.path} and ${path} both hold ${describeImage(image)}, with different contents`, {
          hint: 'build each cell once, or drop the stale fragment',
        });
      }
      cells.set(imageKey(image), { image, path });
      const other = defaults.get(defaultKey(image));
      if (image.default && other && other.image.version !== image.version) {
        throw new InputError(`fragments ${other.path} and ${path} both mark a default ${image.language} for ${image.arch}: ${other.image.version} and ${image.version}`, {
          hint: 'the fragments come from different recipes; rebuild them from one',
        });
      }
      if (image.default) defaults.set(defaultKey(image), { image, path });
    }
  }
  return { ...emptyManifest(), images: [...cells.values()].map((cell) => cell.image).sort(compareImages) };
}

/** Writes the fragment of one cell (with its input digest); false when it was already so. */
export async function writeFragment(outDir: string, key: string, image: ManifestImage, inputDigest: string): Promise<boolean> {
  return writeManifest(fragmentPath(outDir, key), { ...emptyManifest(), images: [{ ...image, inputDigest }] });
}
