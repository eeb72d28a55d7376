/**
 * How a runtime reads a rampack manifest (docs/manifest.md): check the
 * signature, pick language -> version (the default when none is asked for)
 * -> arch, and verify the file's size and sha256 before booting it.
 */
import { createHash, createPublicKey, verify } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export interface ManifestEntry { language: string; version: string; default: boolean; arch: string; variant?: string; file: string; sha256: string; size: number }
export interface Manifest { schemaVersion: number; images: ManifestEntry[] }

export function selectImage(manifest: Manifest, language: string, arch: string, version?: string, variant?: 'slim'): ManifestEntry {
  if (manifest.schemaVersion !== 2) throw new Error(`manifest schemaVersion ${manifest.schemaVersion} is not supported`);
  const image = manifest.images.find((i) => i.language === language && i.arch === arch && i.variant === variant && (version === undefined ? i.default : i.version === version));
  if (!image) throw new Error(`no ${language} ${version ?? '(default version)'} for ${arch}`);
  return image;
}

/** Returns the verified initramfs bytes to hand to the VMM. */
export async function loadInitramfs(manifestPath: string, publicKeyPem: string, language: string, arch: string, version?: string): Promise<Buffer> {
  const manifestBytes = await readFile(manifestPath);
  const signature = JSON.parse(await readFile(`${manifestPath}.sig`, 'utf8')) as { algorithm: string; signature: string };
  const signed = signature.algorithm === 'ed25519' && verify(null, manifestBytes, createPublicKey(publicKeyPem), Buffer.from(signature.signature, 'base64'));
  if (!signed) throw new Error(`${manifestPath}: bad signature`);
  const image = selectImage(JSON.parse(manifestBytes.toString('utf8')) as Manifest, language, arch, version);
  if (image.file.startsWith('/') || image.file.split('/').includes('..')) throw new Error(`unsafe file name ${image.file}`);
  const bytes = await readFile(join(dirname(manifestPath), image.file));
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (bytes.length !== image.size || sha256 !== image.sha256) throw new Error(`${image.file} does not match the manifest`);
  return bytes;
}
