import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadInitramfs, selectImage, type Manifest as ReaderManifest } from '../../examples/manifest-reader.ts';
import { UsageError, VerificationError } from '../../src/errors.ts';
import { emptyManifest, mergeImages, serializeManifest, type ManifestImage } from '../../src/manifest/manifest.ts';
import { keyId, loadSigningKey, loadVerifyKey, signManifestFile, SIGNING_KEY_ENV, verifySignature, writeKeyPair } from '../../src/manifest/sign.ts';
import { verifyManifest } from '../../src/manifest/verify.ts';
import { testDirectory } from '../helpers/temp.ts';

const dir = testDirectory('sign');
const privatePath = join(dir, 'signing.key');
const publicPath = join(dir, 'signing.pub');
const keyPairId = await writeKeyPair(privatePath, publicPath);

function entry(version: string, isDefault: boolean, data: Buffer): ManifestImage {
  return {
    language: 'go', version, default: isDefault, arch: 'x86_64', file: `go-${version}.cpio.gz`,
    sha256: createHash('sha256').update(data).digest('hex'), size: data.length, compression: 'gzip', uncompressedSize: 9,
    agent: { sha256: 'cd'.repeat(32) }, env: [],
    boot: { cmdline: 'rootfstype=ramfs', minMemoryMiB: 80, minKernel: '3.7', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y'] },
    source: { reference: 'golang', manifestDigest: `sha256:${'1'.repeat(64)}`, configDigest: `sha256:${'2'.repeat(64)}` },
  };
}

/** A manifest with two images and their files, signed. */
async function signedManifest(): Promise<string> {
  const out = mkdtempSync(join(dir, 'out-'));
  const files = { '1.24': Buffer.from('initramfs 1.24'), '1.25': Buffer.from('initramfs 1.25') };
  for (const [version, data] of Object.entries(files)) writeFileSync(join(out, `go-${version}.cpio.gz`), data);
  const manifest = mergeImages(emptyManifest(), [entry('1.24', false, files['1.24']), entry('1.25', true, files['1.25'])]);
  const path = join(out, 'manifest.json');
  writeFileSync(path, serializeManifest(manifest));
  await signManifestFile(path, await loadSigningKey(privatePath));
  return path;
}

describe('keys and signatures', () => {
  it('makes a key pair with a private file only its owner can read, and never overwrites it', async () => {
    expect(statSync(privatePath).mode & 0o777).toBe(0o600);
    expect(readFileSync(publicPath, 'utf8')).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    expect(keyId(await loadVerifyKey(publicPath))).toBe(keyPairId);
    await expect(writeKeyPair(privatePath, join(dir, 'other.pub'))).rejects.toThrow(UsageError);
  });

  it('takes the signing key from the environment when no file is given', async () => {
    const key = await loadSigningKey(undefined, { [SIGNING_KEY_ENV]: readFileSync(privatePath, 'utf8') });
    expect(keyId(key)).toBe(keyPairId);
    await expect(loadSigningKey(undefined, {})).rejects.toThrow(`set ${SIGNING_KEY_ENV}`);
    await expect(loadSigningKey(undefined, { [SIGNING_KEY_ENV]: 'not a key' })).rejects.toThrow(`$${SIGNING_KEY_ENV} is not a PEM key`);
  });

  it('verifies a signed manifest and its files', async () => {
    const path = await signedManifest();
    expect(await verifyManifest(path, await loadVerifyKey(publicPath))).toEqual({ images: 2, signatureChecked: true });
  });

  it('rejects a manifest changed after signing, a wrong key and a changed file', async () => {
    const path = await signedManifest();
    const key = await loadVerifyKey(publicPath);
    const original = readFileSync(path, 'utf8');
    writeFileSync(path, original.replace('"size": 14', '"size": 15'));
    await expect(verifyManifest(path, key)).rejects.toThrow('does not match its bytes');
    writeFileSync(path, original);

    const otherDir = mkdtempSync(join(dir, 'other-'));
    await writeKeyPair(join(otherDir, 'k'), join(otherDir, 'k.pub'));
    await expect(verifyManifest(path, await loadVerifyKey(join(otherDir, 'k.pub')))).rejects.toThrow(`not the given key`);

    writeFileSync(join(path, '..', 'go-1.24.cpio.gz'), 'initramfs 1.2X');
    const error = await verifyManifest(path, key).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain('go-1.24.cpio.gz: sha256');
  });

  it('rejects a signature file that is not a signature', () => {
    expect(() => verifySignature(Buffer.from('x'), '{', {} as never, 'm')).toThrow('not valid JSON');
    expect(() => verifySignature(Buffer.from('x'), '{"schemaVersion":1,"algorithm":"rsa"}', {} as never, 'm')).toThrow('not a schemaVersion 1 ed25519');
  });
});

describe('the reader example in examples/manifest-reader.ts', () => {
  it('picks the default version, or the one asked for, and returns verified bytes', async () => {
    const path = await signedManifest();
    const publicPem = readFileSync(publicPath, 'utf8');
    expect((await loadInitramfs(path, publicPem, 'go', 'x86_64')).toString()).toBe('initramfs 1.25');
    expect((await loadInitramfs(path, publicPem, 'go', 'x86_64', '1.24')).toString()).toBe('initramfs 1.24');
    await expect(loadInitramfs(path, publicPem, 'go', 'aarch64')).rejects.toThrow('no go (default version) for aarch64');
  });

  it('refuses a bad signature, a changed file and an unknown schemaVersion', async () => {
    const path = await signedManifest();
    const publicPem = readFileSync(publicPath, 'utf8');
    writeFileSync(join(path, '..', 'go-1.25.cpio.gz'), 'initramfs 1.2X');
    await expect(loadInitramfs(path, publicPem, 'go', 'x86_64')).rejects.toThrow('does not match the manifest');
    writeFileSync(path, readFileSync(path, 'utf8').replace('"1.24"', '"1.23"'));
    await expect(loadInitramfs(path, publicPem, 'go', 'x86_64')).rejects.toThrow('bad signature');
    expect(() => selectImage({ schemaVersion: 3, images: [] } as ReaderManifest, 'go', 'x86_64')).toThrow('schemaVersion 3 is not supported');
  });
});
