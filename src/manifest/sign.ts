/**
 * Ed25519 signatures over the exact bytes of a manifest, kept beside it as
 * `manifest.json.sig` (docs/manifest.md, "Signature"). Keys are PEM files
 * (PKCS#8 private, SPKI public), the form openssl and every language's
 * crypto library read.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { stat, writeFile } from 'node:fs/promises';
import { InputError, UsageError, VerificationError } from '../errors.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { sha256Digest } from '../util/digest.ts';
import { INPUT_FILE_LIMITS, readInputFile, readInputText } from '../util/input-file.ts';

export const SIGNATURE_SUFFIX = '.sig';
export const SIGNING_KEY_ENV = 'RAMPACK_SIGNING_KEY';
const SIGNATURE_SCHEMA_VERSION = 1;

/** The detached signature file: JSON, so the key it was made with can be named and the format can grow. */
export interface SignatureDocument {
  schemaVersion: number;
  algorithm: 'ed25519';
  /** sha256 of the public key's DER (SPKI) encoding: lets a runtime that trusts several keys pick one. */
  keyId: string;
  /** Base64 of the 64-byte Ed25519 signature over the manifest file's bytes. */
  signature: string;
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

/** The signing key: --key FILE, else the PEM text in $RAMPACK_SIGNING_KEY. */
export async function loadSigningKey(file?: string, env: NodeJS.ProcessEnv = process.env): Promise<KeyObject> {
  const [pem, source] = file ? [await readKeyFile(file), `key ${file}`] : [env[SIGNING_KEY_ENV], `$${SIGNING_KEY_ENV}`];
  if (!pem) throw new UsageError(`no signing key: pass --key FILE or set ${SIGNING_KEY_ENV} to the private key's PEM text`);
  return requireEd25519(parseKey(() => createPrivateKey(pem), source), source);
}

/** A public key file; a private key file works too (its public half is used). */
export async function loadVerifyKey(file: string): Promise<KeyObject> {
  const pem = await readKeyFile(file);
  const source = `key ${file}`;
  return requireEd25519(parseKey(() => createPublicKey(pem), source), source);
}

export function signBytes(bytes: Buffer, privateKey: KeyObject): SignatureDocument {
  return {
    schemaVersion: SIGNATURE_SCHEMA_VERSION,
    algorithm: 'ed25519',
    keyId: keyId(privateKey),
    signature: sign(null, bytes, privateKey).toString('base64'),
  };
}

export function serializeSignature(signature: SignatureDocument): string {
  return `${JSON.stringify(signature, null, 2)}\n`;
}

/** Checks a signature file's text against the bytes it signs; throws VerificationError naming `what`. */
export function verifySignature(bytes: Buffer, signatureText: string, publicKey: KeyObject, what: string): void {
  let signature: SignatureDocument;
  try {
    signature = JSON.parse(signatureText) as SignatureDocument;
  } catch {
    throw new VerificationError(`signature of ${what} is not valid JSON`);
  }
  if (signature.schemaVersion !== SIGNATURE_SCHEMA_VERSION || signature.algorithm !== 'ed25519' || typeof signature.signature !== 'string') {
    throw new VerificationError(`signature of ${what} is not a schemaVersion 1 ed25519 signature`);
  }
  const expectedId = keyId(publicKey);
  if (signature.keyId !== expectedId) {
    throw new VerificationError(`${what} was signed with key ${signature.keyId}, not the given key ${expectedId}`, { hint: 'verify with the key that signed it' });
  }
  if (!verify(null, bytes, publicKey, Buffer.from(signature.signature, 'base64'))) {
    throw new VerificationError(`signature of ${what} does not match its bytes: it was changed after signing`);
  }
}

/** Signs a manifest file in place: writes FILE.sig atomically. */
export async function signManifestFile(path: string, privateKey: KeyObject): Promise<string> {
  const signaturePath = `${path}${SIGNATURE_SUFFIX}`;
  await writeFileAtomically(signaturePath, serializeSignature(signBytes(await readInputFile(path, 'manifest', INPUT_FILE_LIMITS.manifest), privateKey)));
  return signaturePath;
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
