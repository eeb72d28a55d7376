/**
 * Ed25519 signatures over the exact bytes of a manifest, kept beside it as
 * `manifest.json.sig` (docs/manifest.md, "Signatures"), one per signing key.
 * Keys are PEM files (PKCS#8 private, SPKI public), the form openssl and
 * every language's crypto library read.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { stat, writeFile } from 'node:fs/promises';
import { InputError, UsageError, VerificationError } from '../errors.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { sha256Digest } from '../util/digest.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';
import { nextFreshness } from './freshness.ts';
import { loadManifest, readManifestBytes, serializeManifest, withFreshness } from './manifest.ts';

export const SIGNATURE_SUFFIX = '.sig';
export const SIGNING_KEY_ENV = 'RAMPACK_SIGNING_KEY';
const SIGNATURE_SCHEMA_VERSION = 2;

export interface Signature {
  algorithm: 'ed25519';
  /** sha256 of the public key's DER (SPKI) encoding: which trusted key to check it with, never a trust decision by itself. */
  keyId: string;
  /** Base64 of the 64-byte Ed25519 signature over the manifest file's bytes. */
  signature: string;
}

/**
 * The detached signature file: JSON holding one signature per signing key
 * (two while a key is rotated), so a reader accepts any key it trusts.
 */
export interface SignatureDocument {
  schemaVersion: number;
  /** sha256 of the manifest bytes the signatures cover: an unsigned hint for tools (`sign --append`, error messages). */
  manifestDigest: string;
  signatures: Signature[];
}

function requireEd25519(key: KeyObject, source: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new InputError(`${source} is a ${key.asymmetricKeyType ?? key.type} key, not Ed25519`, { hint: 'make one with `rampack keygen`' });
  }
  return key;
}

function parseKey<T>(parse: () => T, source: string): T {
  try {
    return parse();
  } catch (error) {
    throw new InputError(`${source} is not a PEM key: ${(error as Error).message}`, { hint: 'make one with `rampack keygen`' });
  }
}

export function keyId(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return sha256Digest(publicKey.export({ type: 'spki', format: 'der' }));
}

function readKeyFile(file: string): Promise<string> {
  return readInputText(file, 'key', INPUT_FILE_LIMITS.key);
}

/** The signing keys: each --key FILE, else the PEM text in $RAMPACK_SIGNING_KEY. */
export async function loadSigningKeys(files: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<KeyObject[]> {
  if (files.length === 0) {
    const pem = env[SIGNING_KEY_ENV];
    if (!pem) throw new UsageError(`no signing key: pass --key FILE or set ${SIGNING_KEY_ENV} to the private key's PEM text`);
    return [requireEd25519(parseKey(() => createPrivateKey(pem), `$${SIGNING_KEY_ENV}`), `$${SIGNING_KEY_ENV}`)];
  }
  const keys: KeyObject[] = [];
  for (const file of files) {
    const pem = await readKeyFile(file);
    keys.push(requireEd25519(parseKey(() => createPrivateKey(pem), `key ${file}`), `key ${file}`));
  }
  return keys;
}

/** A public key file; a private key file works too (its public half is used). */
export async function loadVerifyKey(file: string): Promise<KeyObject> {
  const pem = await readKeyFile(file);
  const source = `key ${file}`;
  return requireEd25519(parseKey(() => createPublicKey(pem), source), source);
}

function signatureBy(bytes: Buffer, privateKey: KeyObject): Signature {
  return { algorithm: 'ed25519', keyId: keyId(privateKey), signature: sign(null, bytes, privateKey).toString('base64') };
}

/** A signature file with one signature per key over `bytes`. */
export function signBytes(bytes: Buffer, privateKeys: readonly KeyObject[]): SignatureDocument {
  return addSignatures({ schemaVersion: SIGNATURE_SCHEMA_VERSION, manifestDigest: sha256Digest(bytes), signatures: [] }, bytes, privateKeys);
}

/** Adds each key's signature over `bytes`, replacing an older one by the same key. */
export function addSignatures(document: SignatureDocument, bytes: Buffer, privateKeys: readonly KeyObject[]): SignatureDocument {
  const added = privateKeys.map((key) => signatureBy(bytes, key));
  const replaced = new Set(added.map((signature) => signature.keyId));
  return { ...document, signatures: [...document.signatures.filter((signature) => !replaced.has(signature.keyId)), ...added] };
}

export function serializeSignature(signature: SignatureDocument): string {
  return `${JSON.stringify(signature, null, 2)}\n`;
}

function isSignatureList(value: unknown): value is Signature[] {
  return Array.isArray(value) && value.every((entry: Partial<Signature> | null) => typeof entry?.algorithm === 'string' && typeof entry.keyId === 'string' && typeof entry.signature === 'string');
}

/** Parses a signature file; anything but a schemaVersion 2 document is refused (VerificationError naming `what`). */
export function parseSignatureDocument(text: string, what: string): SignatureDocument {
  let document: SignatureDocument;
  try {
    document = JSON.parse(text) as SignatureDocument;
  } catch {
    throw new VerificationError(`signature of ${what} is not valid JSON`);
  }
  if (document?.schemaVersion !== SIGNATURE_SCHEMA_VERSION || !isSignatureList(document.signatures)) {
    throw new VerificationError(`signature of ${what} is not a schemaVersion ${SIGNATURE_SCHEMA_VERSION} signature file (found schemaVersion ${String(document?.schemaVersion)})`, {
      hint: 'sign the manifest again with this rampack (`rampack manifest sign`); schemaVersion 1 signature files are not read',
    });
  }
  return document;
}

function verifiesWith(bytes: Buffer, signature: Signature, publicKey: KeyObject): boolean {
  if (signature.algorithm !== 'ed25519') return false;
  try {
    return verify(null, bytes, publicKey, Buffer.from(signature.signature, 'base64'));
  } catch {
    return false;
  }
}

/**
 * Checks a signature file's text against the bytes it signs: accepted when
 * any signature whose keyId names a trusted key verifies with that key (a
 * keyId alone proves nothing; signatures by other keys are ignored). Returns
 * the keyId that verified; throws VerificationError naming `what` otherwise.
 */
export function verifySignatures(bytes: Buffer, signatureText: string, trustedKeys: readonly KeyObject[], what: string): string {
  const document = parseSignatureDocument(signatureText, what);
  const trusted = new Map(trustedKeys.map((key) => [keyId(key), key]));
  const failed: string[] = [];
  for (const signature of document.signatures) {
    const key = trusted.get(signature.keyId);
    if (!key) continue;
    if (verifiesWith(bytes, signature, key)) return signature.keyId;
    failed.push(signature.keyId);
  }
  if (failed.length > 0) {
    throw new VerificationError(`signature of ${what} by ${failed.join(', ')} does not match its bytes: it was changed after signing`, {
      hint: 'fetch the manifest and its signature again; if it persists, the manifest was altered',
    });
  }
  const seen = document.signatures.map((signature) => signature.keyId);
  throw new VerificationError(`${what} has no signature by a trusted key: signed by ${seen.join(', ') || 'no key'}; trusted: ${[...trusted.keys()].join(', ')}`, {
    hint: 'verify with the public key that signed it (several --key during a rotation), or have it signed by a trusted key (`rampack manifest sign --append`)',
  });
}

export interface SignOptions {
  /** `--expires`: a duration or an RFC 3339 time (default DEFAULT_VALIDITY). */
  expires?: string;
  /** Add signatures to the existing file, leaving the manifest's bytes (and serial) as they are. */
  append?: boolean;
  now?: Date;
}

export interface SignResult {
  signaturePath: string;
  serial?: number;
  expires?: string;
  keyIds: string[];
}

async function readSignatureFile(signaturePath: string, manifestPath: string): Promise<string> {
  return readInputText(signaturePath, 'signature', INPUT_FILE_LIMITS.signature).catch((error: unknown) => {
    if (!isMissingFile(error)) throw error;
    throw new UsageError(`${manifestPath} has no signature ${signaturePath} to add to`, { hint: 'sign it without --append first' });
  });
}

/**
 * `--append`: one more signature over the manifest's bytes as they are, for a
 * key rotation. The bytes must be those the file's signatures cover, or the
 * result would mix signatures of two contents.
 */
async function appendSignatures(path: string, privateKeys: readonly KeyObject[]): Promise<SignResult> {
  const signaturePath = `${path}${SIGNATURE_SUFFIX}`;
  const bytes = await readManifestBytes(path);
  const document = parseSignatureDocument(await readSignatureFile(signaturePath, path), `manifest ${path}`);
  if (document.manifestDigest !== sha256Digest(bytes)) {
    throw new InputError(`${path} changed since ${signaturePath} was made (it covers ${document.manifestDigest}, the file is ${sha256Digest(bytes)})`, {
      hint: 'sign it anew with every key at once: `rampack manifest sign MANIFEST --key OLD --key NEW`',
    });
  }
  const { manifest } = await loadManifest(path);
  await writeFileAtomically(signaturePath, serializeSignature(addSignatures(document, bytes, privateKeys)));
  return { signaturePath, serial: manifest.serial, expires: manifest.expires, keyIds: privateKeys.map(keyId) };
}

/**
 * Signs a manifest file in place: gives it the next serial and a new expiry
 * (docs/manifest.md, "Freshness"), then writes FILE.sig and FILE, each
 * atomically, the signature first (as `publish` does).
 */
export async function signManifestFile(path: string, privateKeys: readonly KeyObject[], options: SignOptions = {}): Promise<SignResult> {
  if (options.append) {
    if (options.expires !== undefined) throw new UsageError('--append keeps the manifest as it was signed; --expires cannot change it', { hint: 'sign without --append to set a new expiry' });
    return appendSignatures(path, privateKeys);
  }
  const { manifest } = await loadManifest(path);
  const freshness = nextFreshness([manifest.serial], { expires: options.expires, signed: true, now: options.now ?? new Date() });
  const bytes = Buffer.from(serializeManifest(withFreshness(manifest, freshness)));
  const signaturePath = `${path}${SIGNATURE_SUFFIX}`;
  await writeFileAtomically(signaturePath, serializeSignature(signBytes(bytes, privateKeys)));
  await writeFileAtomically(path, bytes);
  return { signaturePath, ...freshness, keyIds: privateKeys.map(keyId) };
}

/** A new key pair as PEM: the private key file is created with mode 0600 and never overwritten. */
export async function writeKeyPair(privatePath: string, publicPath: string): Promise<string> {
  for (const path of [privatePath, publicPath]) {
    if (await stat(path).then(() => true, () => false)) {
      throw new UsageError(`${path} exists; rampack keygen never overwrites a key`, { hint: 'choose other file names or remove the old key' });
    }
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const publicPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  for (const [path, text, mode] of [[privatePath, privatePem, 0o600], [publicPath, publicPem, 0o644]] as const) {
    // wx: never replace a file that appeared since the check.
    await writeFile(path, text, { mode, flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
      throw new InputError(`cannot write ${path}: ${error.code ?? error.message}`);
    });
  }
  return keyId(publicKey);
}
