import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadInitramfs, selectImage, type AcceptedState, type Manifest as ReaderManifest } from '../../examples/manifest-reader.ts';
import { InputError, UsageError, VerificationError } from '../../src/errors.ts';
import { expiryFrom } from '../../src/manifest/freshness.ts';
import { loadManifest, mergeImages, serializeManifest, withFreshness, type Manifest } from '../../src/manifest/manifest.ts';
import { keyId, loadSigningKeys, loadVerifyKey, serializeSignature, signBytes, signManifestFile, SIGNING_KEY_ENV, verifySignatures, writeKeyPair } from '../../src/manifest/sign.ts';
import { verifyManifest } from '../../src/manifest/verify.ts';
import { manifestEntry, writeBuildOutput } from '../helpers/manifests.ts';
import { testDirectory } from '../helpers/temp.ts';

const dir = testDirectory('sign');

async function keyPair(name: string) {
  const privatePath = join(dir, `${name}.key`);
  const publicPath = join(dir, `${name}.pub`);
  const id = await writeKeyPair(privatePath, publicPath);
  const [signing] = await loadSigningKeys([privatePath]);
  return { privatePath, publicPath, id, signing: signing!, verifying: await loadVerifyKey(publicPath), pem: readFileSync(publicPath, 'utf8') };
}

const oldKey = await keyPair('old');
const newKey = await keyPair('new');
const strangerKey = await keyPair('stranger');

const FILES = { '1.24': 'initramfs 1.24', '1.25': 'initramfs 1.25' };

/** A build output with two images, signed by `keys` (default: the old key). */
async function signedManifest(keys = [oldKey.signing], expires?: string): Promise<string> {
  const path = writeBuildOutput(dir, FILES);
  await signManifestFile(path, keys, { expires });
  return path;
}

function manifestAt(path: string): Manifest {
  return JSON.parse(readFileSync(path, 'utf8')) as Manifest;
}

/** Replaces the manifest with `change(manifest)` and signs those bytes as they are (no serial or expiry of its own). */
function writeSignedAsIs(path: string, change: (manifest: Manifest) => Manifest): void {
  const bytes = Buffer.from(serializeManifest(change(manifestAt(path))));
  writeFileSync(path, bytes);
  writeFileSync(`${path}.sig`, serializeSignature(signBytes(bytes, [oldKey.signing])));
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe('keys', () => {
  it('makes a key pair with a private file only its owner can read, and never overwrites it', async () => {
    expect(statSync(oldKey.privatePath).mode & 0o777).toBe(0o600);
    expect(oldKey.pem).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    expect(keyId(oldKey.verifying)).toBe(oldKey.id);
    await expect(writeKeyPair(oldKey.privatePath, join(dir, 'other.pub'))).rejects.toThrow(UsageError);
  });

  it('takes the signing key from the environment when no file is given', async () => {
    const [key] = await loadSigningKeys([], { [SIGNING_KEY_ENV]: readFileSync(oldKey.privatePath, 'utf8') });
    expect(keyId(key!)).toBe(oldKey.id);
    await expect(loadSigningKeys([], {})).rejects.toThrow(`set ${SIGNING_KEY_ENV}`);
    await expect(loadSigningKeys([], { [SIGNING_KEY_ENV]: 'not a key' })).rejects.toThrow(`$${SIGNING_KEY_ENV} is not a PEM key`);
  });
});

describe('manifest sign: serial and expiry', () => {
  it('gives the manifest serial 1 and an expiry 30 days out by default, inside the signed bytes', async () => {
    const before = Date.now();
    const path = await signedManifest();
    const manifest = manifestAt(path);
    expect(manifest.serial).toBe(1);
    expect(manifest.expires).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    const days = (Date.parse(manifest.expires!) - before) / 86_400_000;
    expect(days).toBeGreaterThan(29.99);
    expect(days).toBeLessThan(30.01);
    expect(Object.keys(manifest)).toEqual(['schemaVersion', 'generator', 'serial', 'expires', 'images']);
    expect(await verifyManifest(path, { keys: [oldKey.verifying] })).toEqual({ images: 2, keyId: oldKey.id, serial: 1, expires: manifest.expires });
  });

  it('raises the serial on every signing, and a rebuilt manifest keeps it so the next signing goes above', async () => {
    const path = await signedManifest();
    await signManifestFile(path, [oldKey.signing], { expires: '12h' });
    expect(manifestAt(path).serial).toBe(2);
    // A build into the same --out replaces entries but keeps the serial (and drops the expiry).
    const rebuilt = mergeImages((await loadManifest(path)).manifest, [manifestEntry('1.24', false, Buffer.from(FILES['1.24']))]);
    expect(rebuilt.serial).toBe(2);
    expect(rebuilt.expires).toBeUndefined();
    writeFileSync(path, serializeManifest(rebuilt));
    const result = await signManifestFile(path, [oldKey.signing]);
    expect(result.serial).toBe(3);
    expect(manifestAt(path).serial).toBe(3);
  });

  it('takes durations and absolute times, and refuses anything else', () => {
    const now = new Date('2026-12-04T10:00:00.500Z');
    expect(expiryFrom('12h', now)).toBe('2026-12-04T22:00:00Z');
    expect(expiryFrom('30d', now)).toBe('2027-01-03T10:00:00Z');
    expect(expiryFrom('2w', now)).toBe('2026-12-18T10:00:00Z');
    expect(expiryFrom('2027-01-03T01:00:00+01:00', now)).toBe('2027-01-03T00:00:00Z');
    expect(() => expiryFrom('soon', now)).toThrow(UsageError);
    expect(() => expiryFrom('12 h', now)).toThrow('neither a duration nor an RFC 3339 time');
    // A time already past is written as given (the commands warn): readers will refuse it.
    expect(expiryFrom('2026-12-01T00:00:00.250Z', now)).toBe('2026-12-01T00:00:00Z');
  });
});

describe('manifest verify: signatures', () => {
  it('refuses a schemaVersion 1 manifest as input, saying to rebuild it', async () => {
    const path = await signedManifest();
    writeFileSync(path, readFileSync(path, 'utf8').replace('"schemaVersion": 2', '"schemaVersion": 1'));
    const error = await verifyManifest(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as InputError).message).toContain('has schemaVersion 1; this rampack writes 2');
    expect((error as InputError).hint).toContain('remove it and rebuild');
  });

  it('rejects bytes changed after signing', async () => {
    const path = await signedManifest();
    writeFileSync(path, readFileSync(path, 'utf8').replace('"size": 14', '"size": 15'));
    const error = await verifyManifest(path, { keys: [oldKey.verifying] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain(`by ${oldKey.id} does not match its bytes`);
  });

  it('refuses a signature by an untrusted key, naming the keys seen and trusted', async () => {
    const path = await signedManifest([strangerKey.signing]);
    const error = await verifyManifest(path, { keys: [oldKey.verifying, newKey.verifying] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain(`has no signature by a trusted key: signed by ${strangerKey.id}; trusted: ${oldKey.id}, ${newKey.id}`);
  });

  it('never trusts a keyId alone: a signature claiming a trusted key must verify with it', async () => {
    const path = await signedManifest([strangerKey.signing]);
    const document = JSON.parse(readFileSync(`${path}.sig`, 'utf8')) as { signatures: Array<{ keyId: string }> };
    document.signatures[0]!.keyId = oldKey.id;
    writeFileSync(`${path}.sig`, JSON.stringify(document));
    await expect(verifyManifest(path, { keys: [oldKey.verifying] })).rejects.toThrow(`by ${oldKey.id} does not match its bytes`);
  });

  it('rotation: a manifest signed by the old and the new key verifies under either key alone', async () => {
    const path = await signedManifest([oldKey.signing, newKey.signing]);
    const document = JSON.parse(readFileSync(`${path}.sig`, 'utf8')) as { schemaVersion: number; signatures: Array<{ keyId: string }> };
    expect(document.schemaVersion).toBe(2);
    expect(document.signatures.map((signature) => signature.keyId)).toEqual([oldKey.id, newKey.id]);
    expect((await verifyManifest(path, { keys: [oldKey.verifying] })).keyId).toBe(oldKey.id);
    expect((await verifyManifest(path, { keys: [newKey.verifying] })).keyId).toBe(newKey.id);
    await expect(verifyManifest(path, { keys: [strangerKey.verifying] })).rejects.toThrow(`signed by ${oldKey.id}, ${newKey.id}; trusted: ${strangerKey.id}`);
  });

  it('--append adds a key\'s signature without touching the manifest, and refuses a manifest changed since', async () => {
    const path = await signedManifest([oldKey.signing]);
    const bytes = readFileSync(path);
    await expect(verifyManifest(path, { keys: [newKey.verifying] })).rejects.toThrow(VerificationError);
    const result = await signManifestFile(path, [newKey.signing], { append: true });
    expect(result).toMatchObject({ serial: 1, keyIds: [newKey.id] });
    expect(readFileSync(path).equals(bytes)).toBe(true);
    expect((await verifyManifest(path, { keys: [newKey.verifying] })).keyId).toBe(newKey.id);
    expect((await verifyManifest(path, { keys: [oldKey.verifying] })).keyId).toBe(oldKey.id);
    // Appending again replaces that key's signature rather than adding a second one.
    await signManifestFile(path, [newKey.signing], { append: true });
    expect((JSON.parse(readFileSync(`${path}.sig`, 'utf8')) as { signatures: unknown[] }).signatures).toHaveLength(2);

    writeFileSync(path, readFileSync(path, 'utf8').replace('"1.24"', '"1.23"'));
    await expect(signManifestFile(path, [newKey.signing], { append: true })).rejects.toThrow(InputError);
    await expect(signManifestFile(path, [newKey.signing], { append: true })).rejects.toThrow('changed since');
    await expect(signManifestFile(path, [newKey.signing], { append: true, expires: '1d' })).rejects.toThrow(UsageError);
    await expect(signManifestFile(writeBuildOutput(dir, FILES), [newKey.signing], { append: true })).rejects.toThrow('has no signature');
  });

  it('refuses a signature file that is not a schemaVersion 2 signature file', () => {
    const key = [oldKey.verifying];
    expect(() => verifySignatures(Buffer.from('x'), '{', key, 'm')).toThrow('not valid JSON');
    const version1 = JSON.stringify({ schemaVersion: 1, algorithm: 'ed25519', keyId: oldKey.id, signature: 'AA==' });
    expect(() => verifySignatures(Buffer.from('x'), version1, key, 'm')).toThrow('not a schemaVersion 2 signature file (found schemaVersion 1)');
    expect(() => verifySignatures(Buffer.from('x'), '{"schemaVersion":2,"signatures":[{"keyId":1}]}', key, 'm')).toThrow(VerificationError);
  });
});

describe('manifest verify: freshness and rollback', () => {
  it('refuses an expired manifest, saying when it expired, unless within the clock skew allowed', async () => {
    const path = await signedManifest([oldKey.signing], '2h');
    const { expires } = manifestAt(path);
    const later = new Date(Date.parse(expires!) + 3 * 3_600_000);
    const error = await verifyManifest(path, { keys: [oldKey.verifying], now: later }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain(`expired at ${expires} (3 hours ago`);
    expect((await verifyManifest(path, { keys: [oldKey.verifying], now: later, clockSkewMs: 4 * 3_600_000 })).serial).toBe(1);
  });

  it('refuses a signed manifest without expires or serial', async () => {
    const path = await signedManifest();
    writeSignedAsIs(path, ({ serial: _serial, ...manifest }) => manifest);
    await expect(verifyManifest(path, { keys: [oldKey.verifying] })).rejects.toThrow('has no serial');
    writeSignedAsIs(path, (manifest) => withFreshness(manifest, { serial: 4 }));
    await expect(verifyManifest(path, { keys: [oldKey.verifying] })).rejects.toThrow('has no expires: a signed manifest must say until when');
    // Unsigned, neither is required (a plain build output).
    expect((await verifyManifest(path)).keyId).toBeUndefined();
  });

  it('refuses an older serial given --min-serial', async () => {
    const path = await signedManifest();
    await signManifestFile(path, [oldKey.signing]);
    expect((await verifyManifest(path, { keys: [oldKey.verifying], minSerial: 2 })).serial).toBe(2);
    const error = await verifyManifest(path, { keys: [oldKey.verifying], minSerial: 3 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain('has serial 2, lower than 3, the last one accepted: a rollback');
  });

  it('with a state file: records what passed, refuses a replay of an older manifest and an equal serial with other bytes', async () => {
    const state = join(mkdtempSync(join(dir, 'state-')), 'accepted.json');
    const path = await signedManifest();
    const old = { manifest: readFileSync(path), signature: readFileSync(`${path}.sig`) };
    const keys = [oldKey.verifying];

    // No state yet: the first manifest is accepted on its signature, and recorded.
    await verifyManifest(path, { keys, statePath: state });
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ serial: 1, sha256: sha256(old.manifest) });
    await verifyManifest(path, { keys, statePath: state });

    await signManifestFile(path, [oldKey.signing]);
    await verifyManifest(path, { keys, statePath: state });
    const recorded = readFileSync(state, 'utf8');
    expect(JSON.parse(recorded)).toMatchObject({ serial: 2, sha256: sha256(readFileSync(path)) });

    writeFileSync(path, old.manifest);
    writeFileSync(`${path}.sig`, old.signature);
    await expect(verifyManifest(path, { keys, statePath: state })).rejects.toThrow('has serial 1, lower than 2, the last one accepted: a rollback');
    expect(readFileSync(state, 'utf8')).toBe(recorded);

    writeSignedAsIs(path, (manifest) => withFreshness(manifest, { serial: 2, expires: expiryFrom('40d', new Date()) }));
    await expect(verifyManifest(path, { keys, statePath: state })).rejects.toThrow('has serial 2 like the manifest accepted before, but other bytes');
    expect(readFileSync(state, 'utf8')).toBe(recorded);
  });

  it('refuses a state file it cannot read rather than forgetting what was accepted', async () => {
    const state = join(mkdtempSync(join(dir, 'state-')), 'accepted.json');
    writeFileSync(state, '{"serial": "seven"}');
    await expect(verifyManifest(await signedManifest(), { keys: [oldKey.verifying], statePath: state })).rejects.toThrow(InputError);
  });

  it('does not record a manifest whose files do not match', async () => {
    const state = join(mkdtempSync(join(dir, 'state-')), 'accepted.json');
    const path = await signedManifest();
    writeFileSync(join(path, '..', 'go-1.24.cpio.gz'), 'initramfs 1.2X');
    await expect(verifyManifest(path, { keys: [oldKey.verifying], statePath: state })).rejects.toThrow('go-1.24.cpio.gz: sha256');
    expect(existsSync(state)).toBe(false);
  });
});

describe('the reader example in examples/manifest-reader.ts', () => {
  const trusted = [oldKey.pem];
  const want = { language: 'go', arch: 'x86_64' };

  it('picks the default version, or the one asked for, and returns verified bytes with the entry\'s boot parameters', async () => {
    const path = await signedManifest();
    const image = await loadInitramfs(path, { trustedKeys: trusted, ...want });
    expect(image.bytes.toString()).toBe('initramfs 1.25');
    expect(image.boot).toEqual({ cmdline: 'rootfstype=ramfs', minMemoryMiB: 256, minKernel: '6.1', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_RD_GZIP=y'] });
    expect(image.accepted).toEqual({ serial: 1, sha256: sha256(readFileSync(path)) });
    expect((await loadInitramfs(path, { trustedKeys: trusted, ...want, version: '1.24' })).bytes.toString()).toBe('initramfs 1.24');
    await expect(loadInitramfs(path, { trustedKeys: trusted, language: 'go', arch: 'aarch64' })).rejects.toThrow('no go (default version) for aarch64');
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want, variant: 'slim' })).rejects.toThrow('no go (default version) slim for x86_64');
  });

  it('accepts a rotation under either key, matching by keyId, and refuses an untrusted key', async () => {
    const path = await signedManifest([oldKey.signing, newKey.signing]);
    for (const key of [oldKey, newKey]) expect((await loadInitramfs(path, { trustedKeys: [key.pem], ...want })).bytes.toString()).toBe('initramfs 1.25');
    await expect(loadInitramfs(path, { trustedKeys: [strangerKey.pem], ...want })).rejects.toThrow(`signed by ${oldKey.id}, ${newKey.id}; trusted: ${strangerKey.id}`);
  });

  it('refuses changed bytes, a changed file, and an unsafe file name even when signed', async () => {
    const path = await signedManifest();
    writeFileSync(join(path, '..', 'go-1.25.cpio.gz'), 'initramfs 1.2X');
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want })).rejects.toThrow('does not match the manifest');
    writeFileSync(path, readFileSync(path, 'utf8').replace('"1.24"', '"1.23"'));
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want })).rejects.toThrow('no signature by a trusted key verifies');
    writeSignedAsIs(path, (manifest) => ({ ...manifest, images: manifest.images.map((image) => ({ ...image, file: `../${image.file}` })) }));
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want })).rejects.toThrow('unsafe file name ../go-1.25.cpio.gz');
  });

  it('refuses an expired manifest, a rollback, an equal serial with other bytes, and another schemaVersion', async () => {
    const path = await signedManifest([oldKey.signing], '1h');
    const { expires } = manifestAt(path);
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want, now: new Date(Date.parse(expires!) + 60_000) })).rejects.toThrow(`expired at ${expires}`);
    const accepted = (await loadInitramfs(path, { trustedKeys: trusted, ...want })).accepted;
    const ahead: AcceptedState = { serial: accepted.serial + 1, sha256: accepted.sha256 };
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want, lastAccepted: ahead })).rejects.toThrow('is lower than 2, the last accepted: a rollback');
    expect((await loadInitramfs(path, { trustedKeys: trusted, ...want, lastAccepted: accepted })).accepted).toEqual(accepted);
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want, lastAccepted: { ...accepted, sha256: 'ab'.repeat(32) } })).rejects.toThrow('was accepted before with other bytes');
    writeSignedAsIs(path, (manifest) => ({ ...manifest, schemaVersion: 1 }));
    await expect(loadInitramfs(path, { trustedKeys: trusted, ...want })).rejects.toThrow('schemaVersion 1 is not supported');
    expect(() => selectImage({ schemaVersion: 3, images: [] } as unknown as ReaderManifest, 'go', 'x86_64')).toThrow('schemaVersion 3 is not supported');
  });

  it('takes the state file `manifest verify --state` writes as its last accepted state', async () => {
    const path = await signedManifest();
    const state = join(mkdtempSync(join(dir, 'state-')), 'accepted.json');
    await verifyManifest(path, { keys: [oldKey.verifying], statePath: state });
    const recorded = JSON.parse(readFileSync(state, 'utf8')) as AcceptedState;
    expect((await loadInitramfs(path, { trustedKeys: trusted, ...want, lastAccepted: recorded })).accepted).toEqual({ serial: recorded.serial, sha256: recorded.sha256 });
  });
});
