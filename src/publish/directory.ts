/**
 * `rampack publish --to DIR`: the layout a static web server or an object
 * store serves (docs/publishing.md):
 *
 *   DIR/files/<language>-<version>-<arch>-<sha256>.cpio.<ext>   content-addressed, never rewritten
 *   DIR/manifest.json.sig                                        when signed
 *   DIR/manifest.json                                            written last, atomically
 *
 * The published manifest's serial goes above the one DIR serves now (and the
 * source's), so a runtime never sees a lower serial for newer content.
 *
 * Files are copied (and hashed on the way) before the manifest that names
 * them appears, so a reader never finds a manifest pointing at a missing or
 * partial file. Files of older manifests stay, for readers that fetched an
 * older manifest, until `--prune` removes those the current one does not name.
 */
import type { KeyObject } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileExtension } from '../compress/index.ts';
import { UsageError, VerificationError } from '../errors.ts';
import { nextFreshness, servedSerialOf } from '../manifest/freshness.ts';
import { loadManifest, MANIFEST_FILE, serializeManifest, withFreshness, type Freshness, type Manifest, type ManifestImage } from '../manifest/manifest.ts';
import { serializeSignature, signBytes, SIGNATURE_SUFFIX } from '../manifest/sign.ts';
import { imageFilePath } from '../manifest/verify.ts';
import { writeAtomically, writeFileAtomically } from '../util/atomic.ts';
import { DigestingStream, digestHex } from '../util/digest.ts';
import { openInputFile } from '../util/input-file.ts';
import type { Logger } from '../util/log.ts';

export const FILES_DIR = 'files';

export interface PublishOptions {
  /** Each key signs the published manifest; with none the destination must not hold a signed one. */
  signingKeys: readonly KeyObject[];
  /** `--expires`: how long the published manifest stays valid (default DEFAULT_VALIDITY when signed). */
  expires?: string;
  /** Remove files the new manifest does not name. */
  prune?: boolean;
  log: Logger;
  now?: Date;
}

export interface PublishResult extends Freshness {
  manifestPath: string;
  copied: string[];
  reused: string[];
  pruned: string[];
}

/** The content-addressed name of an image's file in the published layout. */
export function publishedName(image: ManifestImage): string {
  return `${FILES_DIR}/${image.language}-${image.version}-${image.arch}-${image.sha256}.cpio${fileExtension(image.compression)}`;
}

async function copyVerified(source: string, destination: string, image: ManifestImage): Promise<void> {
  await writeAtomically(destination, async (temporary) => {
    const measure = new DigestingStream();
    // One byte more than the manifest says is enough to tell that the file differs.
    const { handle } = await openInputFile(source, 'initramfs');
    await pipeline(handle.createReadStream({ start: 0, end: image.size }), measure, createWriteStream(temporary, { flush: true }));
    const { size } = measure;
    const sha256 = digestHex(measure.digest());
    if (sha256 !== image.sha256 || size !== image.size) {
      throw new VerificationError(`${source} has ${size} bytes with sha256 ${sha256}; the manifest says ${image.size} bytes, ${image.sha256}`, {
        hint: 'rebuild it: the file changed after the manifest was written',
      });
    }
  });
}

/** Copies the image's file unless the destination already has it (its name is its hash). */
async function publishFile(manifestPath: string, dir: string, image: ManifestImage, result: PublishResult): Promise<string> {
  const name = publishedName(image);
  const destination = join(dir, name);
  const existing = await stat(destination).catch(() => undefined);
  if (existing?.isFile() && existing.size === image.size) {
    result.reused.push(name);
  } else {
    await copyVerified(imageFilePath(manifestPath, image), destination, image);
    result.copied.push(name);
  }
  return name;
}

async function hasFile(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

async function pruneFiles(dir: string, manifest: Manifest): Promise<string[]> {
  const referenced = new Set(manifest.images.map((image) => image.file));
  const names = await readdir(join(dir, FILES_DIR)).catch(() => [] as string[]);
  const unreferenced = names.map((name) => `${FILES_DIR}/${name}`).filter((name) => !referenced.has(name) && !name.endsWith('.tmp'));
  for (const name of unreferenced) await rm(join(dir, name), { force: true });
  return unreferenced;
}

/** Publishes the manifest at `manifestPath` and its files into `dir`. */
export async function publishToDirectory(manifestPath: string, dir: string, options: PublishOptions): Promise<PublishResult> {
  const target = join(dir, MANIFEST_FILE);
  const signaturePath = `${target}${SIGNATURE_SUFFIX}`;
  const signed = options.signingKeys.length > 0;
  if (!signed && (await hasFile(signaturePath))) {
    throw new UsageError(`${dir} holds a signed manifest; publishing unsigned would leave readers a signature that no longer matches`, {
      hint: `pass --key FILE (or set RAMPACK_SIGNING_KEY), or remove ${signaturePath} on purpose`,
    });
  }
  const { manifest } = await loadManifest(manifestPath);
  const freshness = nextFreshness([manifest.serial, await servedSerialOf(target)], { expires: options.expires, signed, now: options.now ?? new Date() });
  const result: PublishResult = { manifestPath: target, ...freshness, copied: [], reused: [], pruned: [] };
  const images: ManifestImage[] = [];
  for (const image of manifest.images) images.push({ ...image, file: await publishFile(manifestPath, dir, image, result) });
  const published = withFreshness({ ...manifest, images }, freshness);
  const bytes = Buffer.from(serializeManifest(published));
  // The signature goes first: a reader that sees the new manifest finds its signature beside it.
  if (signed) await writeFileAtomically(signaturePath, serializeSignature(signBytes(bytes, options.signingKeys)));
  await writeFileAtomically(target, bytes);
  options.log.info(`published ${target} (serial ${freshness.serial}): ${result.copied.length} files copied, ${result.reused.length} already there`);
  if (options.prune) {
    result.pruned = await pruneFiles(dir, published);
    options.log.info(`pruned ${result.pruned.length} files no longer named by ${target}`);
  }
  return result;
}
