/**
 * `rampack manifest verify`: a manifest's signatures, its freshness (expiry,
 * serial against the last one accepted), and every file it names checked
 * against its size and sha256, as a runtime would before booting one.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { KeyObject } from 'node:crypto';
import { VerificationError } from '../errors.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';
import { checkFreshness, formatTimestamp, readAcceptedState, writeAcceptedState } from './freshness.ts';
import { parseManifest, readManifestBytes, type ManifestImage } from './manifest.ts';
import { SIGNATURE_SUFFIX, verifySignatures } from './sign.ts';

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

export interface VerifyOptions {
  /** Trusted public keys; with none the signature and the fields only signed manifests must carry are not checked. */
  keys?: readonly KeyObject[];
  /** The last serial accepted: a lower one is a rollback. */
  minSerial?: number;
  /** The runtime's state file: read for the last accepted serial, updated once everything passed. */
  statePath?: string;
  now?: Date;
  clockSkewMs?: number;
}

export interface VerifyResult {
  images: number;
  /** The trusted key whose signature verified; undefined when no key was given. */
  keyId?: string;
  serial?: number;
  expires?: string;
}

async function readSignature(manifestPath: string): Promise<string> {
  const signaturePath = `${manifestPath}${SIGNATURE_SUFFIX}`;
  return readInputText(signaturePath, 'signature', INPUT_FILE_LIMITS.signature).catch((error: unknown) => {
    if (!isMissingFile(error)) throw error;
    throw new VerificationError(`manifest ${manifestPath} has no signature ${signaturePath}`, { hint: 'sign it with `rampack manifest sign`' });
  });
}

/**
 * What a runtime does before booting anything: the signature over the bytes
 * as read (before parsing them), then freshness (expiry, rollback), then
 * every file's size and sha256; and only then the state file moves on.
 */
export async function verifyManifest(manifestPath: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const keys = options.keys ?? [];
  const bytes = await readManifestBytes(manifestPath);
  const what = `manifest ${manifestPath}`;
  const keyId = keys.length > 0 ? verifySignatures(bytes, await readSignature(manifestPath), keys, what) : undefined;
  const manifest = await parseManifest(bytes.toString('utf8'), manifestPath);
  const accepted = options.statePath === undefined ? undefined : await readAcceptedState(options.statePath);
  const now = options.now ?? new Date();
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  checkFreshness(manifest, sha256, what, {
    signed: keyId !== undefined,
    now,
    clockSkewMs: options.clockSkewMs ?? 0,
    minSerial: options.minSerial,
    accepted,
    recordsSerial: options.statePath !== undefined,
  });
  await verifyManifestFiles(manifestPath, manifest.images);
  if (options.statePath !== undefined) {
    await writeAcceptedState(options.statePath, { serial: manifest.serial!, sha256, expires: manifest.expires, acceptedAt: formatTimestamp(now) });
  }
  return { images: manifest.images.length, keyId, serial: manifest.serial, expires: manifest.expires };
}
