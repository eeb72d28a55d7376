/**
 * Freshness, rollback and key rotation through the real CLI, as a publisher
 * and a runtime run it: `rampack keygen`, `manifest sign` (--expires,
 * several --key, --append), `manifest verify` (--key, --min-serial, --state,
 * --clock-skew) and `publish` raising the serial. Refusals exit with code 5.
 */
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { serializeManifest, type Manifest } from '../../src/manifest/manifest.ts';
import { loadSigningKeys, serializeSignature, signBytes } from '../../src/manifest/sign.ts';
import { runRampack } from '../helpers/cli.ts';
import { writeBuildOutput } from '../helpers/manifests.ts';
import { testDirectory } from '../helpers/temp.ts';

const work = testDirectory('trust');
const keys: Record<'old' | 'new' | 'stranger', { key: string; pub: string; id: string }> = {} as never;

function manifestAt(path: string): Manifest {
  return JSON.parse(readFileSync(path, 'utf8')) as Manifest;
}

async function sign(manifest: string, ...args: string[]) {
  const result = await runRampack(['manifest', 'sign', manifest, ...args]);
  expect(result.stderr).not.toContain('error');
  expect(result.code).toBe(0);
  return result;
}

function verify(manifest: string, ...args: string[]) {
  return runRampack(['manifest', 'verify', manifest, ...args]);
}

beforeAll(async () => {
  for (const name of ['old', 'new', 'stranger'] as const) {
    const key = join(work, `${name}.key`);
    const pub = join(work, `${name}.pub`);
    const result = await runRampack(['keygen', '--private', key, '--public', pub]);
    expect(result.code).toBe(0);
    keys[name] = { key, pub, id: (JSON.parse(result.stdout) as { keyId: string }).keyId };
  }
});

describe('rampack manifest sign and verify', () => {
  it('signs with serial 1 and the expiry asked for, and verifies it', async () => {
    const manifest = writeBuildOutput(work, { '1.26': 'go 1.26', '1.27': 'go 1.27' });
    const signed = await sign(manifest, '--key', keys.old.key, '--expires', '12h');
    const { serial, expires } = manifestAt(manifest);
    expect(serial).toBe(1);
    expect(Date.parse(expires!) - Date.now()).toBeGreaterThan(11.9 * 3_600_000);
    expect(signed.stderr).toContain(`(serial 1, expires ${expires})`);
    const verified = await verify(manifest, '--key', keys.old.pub);
    expect(verified.code).toBe(0);
    expect(verified.stderr).toContain(`signature valid, 2 files match their size and sha256 (key ${keys.old.id}, serial 1, expires ${expires})`);
  });

  it('never goes back to serial 1 when the manifest is merged or rebuilt again: the next signing goes above', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    const fragment = join(manifest, '..', 'fragment.json');
    cpSync(manifest, fragment);
    await sign(manifest, '--key', keys.old.key);
    await sign(manifest, '--key', keys.old.key);
    expect(manifestAt(manifest).serial).toBe(2);
    const merged = await runRampack(['manifest', 'merge', fragment, '--out', manifest]);
    expect(merged.code).toBe(0);
    expect(manifestAt(manifest)).toMatchObject({ serial: 2 });
    expect(manifestAt(manifest).expires).toBeUndefined();
    await sign(manifest, '--key', keys.old.key);
    expect(manifestAt(manifest).serial).toBe(3);
  });

  it('refuses a signature by an untrusted key with exit code 5, naming the keys seen and trusted', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.stranger.key);
    const result = await verify(manifest, '--key', keys.old.pub, '--key', keys.new.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain(`has no signature by a trusted key: signed by ${keys.stranger.id}; trusted: ${keys.old.id}, ${keys.new.id}`);
  });

  it('refuses bytes changed after signing with exit code 5', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.old.key);
    writeFileSync(manifest, readFileSync(manifest, 'utf8').replace('"default": true', '"default": false'));
    const result = await verify(manifest, '--key', keys.old.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain('does not match its bytes: it was changed after signing');
  });

  it('rotation: signed by the old and the new key at once, it verifies under either key alone', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.old.key, '--key', keys.new.key);
    for (const key of [keys.old, keys.new]) {
      const result = await verify(manifest, '--key', key.pub);
      expect(result.code).toBe(0);
      expect(result.stderr).toContain(`(key ${key.id}, serial 1`);
    }
    expect((await verify(manifest, '--key', keys.stranger.pub)).code).toBe(5);
  });

  it('rotation: --append adds the new key to a manifest signed by the old one without changing it', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.old.key);
    const bytes = readFileSync(manifest);
    expect((await verify(manifest, '--key', keys.new.pub)).code).toBe(5);
    const appended = await sign(manifest, '--append', '--key', keys.new.key);
    expect(appended.stderr).toContain(`added the signature of ${keys.new.id}`);
    expect(readFileSync(manifest).equals(bytes)).toBe(true);
    expect((await verify(manifest, '--key', keys.new.pub)).code).toBe(0);
    expect((await verify(manifest, '--key', keys.old.pub)).code).toBe(0);
  });

  it('refuses an expired manifest with exit code 5, saying when it expired; --clock-skew tolerates a lagging clock', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    // An old signed manifest, as a replaying attacker would serve it: expired two hours ago.
    const expires = new Date(Date.now() - 2 * 3_600_000).toISOString().replace(/\.\d+Z$/, 'Z');
    const bytes = Buffer.from(serializeManifest({ ...manifestAt(manifest), serial: 9, expires }));
    writeFileSync(manifest, bytes);
    writeFileSync(`${manifest}.sig`, serializeSignature(signBytes(bytes, await loadSigningKeys([keys.old.key]))));
    const result = await verify(manifest, '--key', keys.old.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain(`expired at ${expires} (2 hours ago`);
    expect((await verify(manifest, '--key', keys.old.pub, '--clock-skew', '3h')).code).toBe(0);
    expect((await verify(manifest, '--key', keys.old.pub, '--clock-skew', 'a while')).code).toBe(2);
  });

  it('signs a manifest with an expiry already past only with a warning, and verify refuses it with exit code 5', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    const signed = await sign(manifest, '--key', keys.old.key, '--expires', '2026-01-01T00:00:00.000Z');
    expect(signed.stderr).toContain('expired at 2026-01-01T00:00:00Z, before it was written');
    const result = await verify(manifest, '--key', keys.old.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toMatch(/expired at 2026-01-01T00:00:00Z \(\d+ days ago/);
    // Unsigned, an expiry is still an expiry.
    expect((await verify(manifest)).code).toBe(5);
  });

  it('refuses a signed manifest without expires with exit code 5', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    const bytes = Buffer.from(serializeManifest({ ...manifestAt(manifest), serial: 3 }));
    writeFileSync(manifest, bytes);
    writeFileSync(`${manifest}.sig`, serializeSignature(signBytes(bytes, await loadSigningKeys([keys.old.key]))));
    const result = await verify(manifest, '--key', keys.old.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain('has no expires: a signed manifest must say until when it is valid');
  });

  it('refuses an older serial with exit code 5: given --min-serial, and remembered with --state', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.old.key);
    const older = mkdtempSync(join(work, 'older-'));
    cpSync(join(manifest, '..'), older, { recursive: true });
    await sign(manifest, '--key', keys.old.key);
    expect(manifestAt(manifest).serial).toBe(2);
    const olderManifest = join(older, 'manifest.json');

    const belowMinimum = await verify(olderManifest, '--key', keys.old.pub, '--min-serial', '2');
    expect(belowMinimum.code).toBe(5);
    expect(belowMinimum.stderr).toContain('has serial 1, lower than 2, the last one accepted: a rollback');
    expect((await verify(manifest, '--key', keys.old.pub, '--min-serial', '2')).code).toBe(0);
    expect((await verify(manifest, '--key', keys.old.pub, '--min-serial', 'two')).code).toBe(2);

    const state = join(work, 'runtime-state.json');
    const accepted = await verify(manifest, '--key', keys.old.pub, '--state', state);
    expect(accepted.code).toBe(0);
    expect(accepted.stderr).toContain(`recorded serial 2 in ${state}`);
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ serial: 2 });
    const replayed = await verify(olderManifest, '--key', keys.old.pub, '--state', state);
    expect(replayed.code).toBe(5);
    expect(replayed.stderr).toContain('has serial 1, lower than 2, the last one accepted: a rollback');
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ serial: 2 });

    // A state written by hand, with the serial alone, works the same way.
    writeFileSync(state, '{"serial": 5}');
    const belowHandWritten = await verify(manifest, '--key', keys.old.pub, '--state', state);
    expect(belowHandWritten.code).toBe(5);
    expect(belowHandWritten.stderr).toContain('has serial 2, lower than 5');
    writeFileSync(state, 'not json');
    expect((await verify(manifest, '--key', keys.old.pub, '--state', state)).code).toBe(3);
  });

  it('refuses a schemaVersion 1 signature file with exit code 5, saying to sign again', async () => {
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    await sign(manifest, '--key', keys.old.key);
    const [signature] = (JSON.parse(readFileSync(`${manifest}.sig`, 'utf8')) as { signatures: object[] }).signatures;
    writeFileSync(`${manifest}.sig`, JSON.stringify({ schemaVersion: 1, ...signature }));
    const result = await verify(manifest, '--key', keys.old.pub);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain('not a schemaVersion 2 signature file (found schemaVersion 1)');
    expect(result.stderr).toContain('sign the manifest again');
  });
});

describe('rampack publish --to DIR raises the serial', () => {
  it('publishing twice gives serial + 1, above what the directory serves, each signed and fresh', async () => {
    const site = mkdtempSync(join(work, 'site-'));
    const manifest = writeBuildOutput(work, { '1.27': 'go 1.27' });
    const first = await runRampack(['publish', manifest, '--to', site, '--key', keys.old.key, '--expires', '7d']);
    expect(first.code).toBe(0);
    const published = join(site, 'manifest.json');
    const firstSerial = manifestAt(published).serial!;
    expect(JSON.parse(first.stdout)).toMatchObject({ serial: firstSerial, expires: manifestAt(published).expires });
    const second = await runRampack(['publish', manifest, '--to', site, '--key', keys.old.key, '--key', keys.new.key]);
    expect(second.code).toBe(0);
    expect(manifestAt(published).serial).toBe(firstSerial + 1);
    expect(Date.parse(manifestAt(published).expires!) - Date.now()).toBeGreaterThan(29 * 86_400_000);
    // A new build output (serial unset) published to the same directory still goes above it.
    const rebuilt = writeBuildOutput(work, { '1.27': 'go 1.27 rebuilt' });
    expect((await runRampack(['publish', rebuilt, '--to', site, '--key', keys.new.key])).code).toBe(0);
    expect(manifestAt(published).serial).toBe(firstSerial + 2);

    const state = join(work, 'site-state.json');
    writeFileSync(state, JSON.stringify({ serial: firstSerial + 1, sha256: 'ab'.repeat(32) }));
    const result = await verify(published, '--key', keys.new.pub, '--state', state);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ serial: firstSerial + 2 });
  });
});
