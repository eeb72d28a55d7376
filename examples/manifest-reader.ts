/**
 * How a runtime reads a rampack manifest (docs/manifest.md, "Reading it"),
 * doing the same checks as `rampack manifest verify`:
 *
 *   1. a signature in manifest.json.sig by a key the runtime trusts (matched by
 *      keyId, then verified: a keyId alone proves nothing), over the bytes as read;
 *   2. schemaVersion 2;
 *   3. `expires` not passed, `serial` not below the last one accepted (and an
 *      equal serial only with the same bytes);
 *   4. pick language -> version (the default when none is asked for) -> arch
 *      (-> variant), refuse an unsafe file name, check size and sha256;
 *   5. hand the VMM the verified bytes with the entry's `boot` (cmdline,
 *      minMemoryMiB), and persist `accepted` for the next start.
 *
 * Standalone on purpose (node: modules only): copy it into a runtime.
 */
import { createHash, createPublicKey, verify } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export const SCHEMA_VERSION = 2;

export interface BootRequirements {
  /** Kernel parameters to pass before the runtime's own `--` arguments (console aside). */
  cmdline: string;
  /** The smallest guest RAM, in MiB, this image boots in with `cmdline`. */
  minMemoryMiB: number;
  minKernel: string;
  kernelConfig: string[];
}

export interface ManifestEntry {
  language: string;
  version: string;
  default: boolean;
  arch: string;
  /** Absent for the full image; e.g. "slim". */
  variant?: string;
  file: string;
  sha256: string;
  size: number;
  boot: BootRequirements;
}

export interface Manifest {
  schemaVersion: number;
  serial: number;
  expires: string;
  images: ManifestEntry[];
}

/** What the runtime keeps between starts: the last manifest it accepted. */
export interface AcceptedState {
  serial: number;
  /** Hex sha256 of that manifest's bytes. */
  sha256: string;
}

export interface ReadOptions {
  /** PEM public keys the runtime trusts: both the old and the new one during a rotation. */
  trustedKeys: string[];
  language: string;
  arch: string;
  version?: string;
  variant?: string;
  /** The state persisted after the previous start; undefined on the very first one. */
  lastAccepted?: AcceptedState;
  now?: Date;
  /** How far this machine's clock may lag: a manifest expired at most this long ago still passes. */
  clockSkewMs?: number;
}

export interface VerifiedImage {
  /** The initramfs, exactly as the manifest describes it: the VMM's initrd. */
  bytes: Buffer;
  entry: ManifestEntry;
  boot: BootRequirements;
  /** Persist this and pass it as `lastAccepted` next time. */
  accepted: AcceptedState;
}

interface Signature {
  algorithm: string;
  keyId: string;
  signature: string;
}

function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** sha256 of the public key's DER (SPKI) encoding, as rampack's keyId. */
export function keyIdOf(publicKeyPem: string): string {
  return `sha256:${sha256Hex(createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' }))}`;
}

/** Accepts when a signature whose keyId names a trusted key verifies with that key; returns that keyId. */
export function verifySignatures(manifestBytes: Buffer, signatureText: string, trustedKeys: string[]): string {
  const document = JSON.parse(signatureText) as { schemaVersion?: number; signatures?: Signature[] };
  if (document.schemaVersion !== SCHEMA_VERSION || !Array.isArray(document.signatures)) {
    throw new Error(`signature file schemaVersion ${String(document.schemaVersion)} is not supported`);
  }
  const trusted = new Map(trustedKeys.map((pem) => [keyIdOf(pem), pem]));
  for (const signature of document.signatures) {
    const pem = trusted.get(signature.keyId);
    if (pem === undefined || signature.algorithm !== 'ed25519') continue;
    if (verify(null, manifestBytes, createPublicKey(pem), Buffer.from(signature.signature, 'base64'))) return signature.keyId;
  }
  const seen = document.signatures.map((signature) => signature.keyId).join(', ') || 'no key';
  throw new Error(`no signature by a trusted key verifies: signed by ${seen}; trusted: ${[...trusted.keys()].join(', ')}`);
}

/** Refuses an expired manifest and a rollback to one older than the last accepted. */
export function checkFreshness(manifest: Manifest, sha256: string, options: Pick<ReadOptions, 'lastAccepted' | 'now' | 'clockSkewMs'>): void {
  const expires = Date.parse(manifest.expires);
  if (!/Z$/.test(String(manifest.expires)) || Number.isNaN(expires)) throw new Error(`manifest has no valid expires: ${String(manifest.expires)}`);
  const now = (options.now ?? new Date()).getTime();
  if (now - expires > (options.clockSkewMs ?? 0)) throw new Error(`manifest expired at ${manifest.expires}`);
  if (!Number.isSafeInteger(manifest.serial) || manifest.serial < 1) throw new Error(`manifest has no valid serial: ${String(manifest.serial)}`);
  const last = options.lastAccepted;
  if (last && manifest.serial < last.serial) throw new Error(`manifest serial ${manifest.serial} is lower than ${last.serial}, the last accepted: a rollback`);
  if (last && manifest.serial === last.serial && sha256 !== last.sha256) throw new Error(`manifest serial ${manifest.serial} was accepted before with other bytes`);
}

export function selectImage(manifest: Manifest, language: string, arch: string, version?: string, variant?: string): ManifestEntry {
  if (manifest.schemaVersion !== SCHEMA_VERSION) throw new Error(`manifest schemaVersion ${manifest.schemaVersion} is not supported`);
  const image = manifest.images.find(
    (i) => i.language === language && i.arch === arch && i.variant === variant && (version === undefined ? i.default : i.version === version),
  );
  if (!image) throw new Error(`no ${language} ${version ?? '(default version)'}${variant ? ` ${variant}` : ''} for ${arch}`);
  const { boot } = image;
  if (typeof boot?.cmdline !== 'string' || !Number.isSafeInteger(boot.minMemoryMiB) || boot.minMemoryMiB < 1) {
    throw new Error(`${image.file} has no usable boot requirements (cmdline, minMemoryMiB)`);
  }
  return image;
}

function isSafeFileName(file: string): boolean {
  return file !== '' && !file.startsWith('/') && !file.includes('\\') && !file.includes('\0') && !file.split('/').includes('..');
}

/** Returns the verified initramfs bytes and the boot parameters to hand to the VMM. */
export async function loadInitramfs(manifestPath: string, options: ReadOptions): Promise<VerifiedImage> {
  const manifestBytes = await readFile(manifestPath);
  const keyId = verifySignatures(manifestBytes, await readFile(`${manifestPath}.sig`, 'utf8'), options.trustedKeys);
  const manifest = JSON.parse(manifestBytes.toString('utf8')) as Manifest;
  if (manifest.schemaVersion !== SCHEMA_VERSION) throw new Error(`manifest schemaVersion ${manifest.schemaVersion} is not supported (signed by ${keyId})`);
  const sha256 = sha256Hex(manifestBytes);
  checkFreshness(manifest, sha256, options);
  const entry = selectImage(manifest, options.language, options.arch, options.version, options.variant);
  if (!isSafeFileName(entry.file)) throw new Error(`unsafe file name ${entry.file}`);
  const bytes = await readFile(join(dirname(manifestPath), entry.file));
  if (bytes.length !== entry.size || sha256Hex(bytes) !== entry.sha256) throw new Error(`${entry.file} does not match the manifest`);
  return { bytes, entry, boot: entry.boot, accepted: { serial: manifest.serial, sha256 } };
}
