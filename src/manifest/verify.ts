/**
 * `rampack manifest verify`: a manifest's signature, and every file it
 * names checked against its size and sha256, as a runtime would before
 * booting one.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { KeyObject } from 'node:crypto';
import { VerificationError } from '../errors.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';
import { loadManifest, type ManifestImage } from './manifest.ts';
import { SIGNATURE_SUFFIX, verifySignature } from './sign.ts';

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** The file an image entry names, refusing names that leave the manifest's directory. */
export function imageFilePath(manifestPath: string, image: Pick<ManifestImage, 'file'>): string {
  const dir = dirname(resolve(manifestPath));
  const path = resolve(dir, image.file);
  const inside = relative(dir, path);
  if (inside === '..' || inside.startsWith(`..${sep}`)) {
    throw new VerificationError(`manifest ${manifestPath} names ${image.file}, outside its directory`);
  }
  return path;
}

/** What is wrong with one image's file, or undefined when size and sha256 match. */
async function fileProblem(manifestPath: string, image: ManifestImage): Promise<string | undefined> {
  const path = imageFilePath(manifestPath, image);
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) return `${image.file}: missing`;
  if (info.size !== image.size) return `${image.file}: ${info.size} bytes, the manifest says ${image.size}`;
  const actual = await sha256File(path);
  return actual === image.sha256 ? undefined : `${image.file}: sha256 ${actual}, the manifest says ${image.sha256}`;
}

/** Checks every file of the manifest; throws one VerificationError listing all that differ. */
export async function verifyManifestFiles(manifestPath: string, images: readonly ManifestImage[]): Promise<void> {
  const problems: string[] = [];
  for (const image of images) {
    const problem = await fileProblem(manifestPath, image);
    if (problem) problems.push(problem);
  }
  if (problems.length > 0) {
    throw new VerificationError(`manifest ${manifestPath}: ${problems.join('; ')}`, { hint: 'rebuild or republish the files, or restore the manifest that matches them' });
  }
}

export interface VerifyResult {
  images: number;
  signatureChecked: boolean;
}

/** Signature (when a key is given) first, then the files. */
export async function verifyManifest(manifestPath: string, publicKey?: KeyObject): Promise<VerifyResult> {
  const { manifest, bytes } = await loadManifest(manifestPath);
  if (publicKey) {
    const signaturePath = `${manifestPath}${SIGNATURE_SUFFIX}`;
    const signature = await readInputText(signaturePath, 'signature', INPUT_FILE_LIMITS.signature).catch((error: unknown) => {
      if (!isMissingFile(error)) throw error;
      throw new VerificationError(`manifest ${manifestPath} has no signature ${signaturePath}`, { hint: 'sign it with `rampack manifest sign`' });
    });
    verifySignature(bytes, signature, publicKey, `manifest ${manifestPath}`);
  }
  await verifyManifestFiles(manifestPath, manifest.images);
  return { images: manifest.images.length, signatureChecked: publicKey !== undefined };
}
