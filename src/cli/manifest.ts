/** `rampack manifest merge | sign | verify`. */
import { resolve } from 'node:path';
import { Command } from 'commander';
import { UsageError } from '../errors.ts';
import { clockSkewMs, DEFAULT_VALIDITY, servedSerialOf, warnIfExpired } from '../manifest/freshness.ts';
import { loadManifest, writeManifest, mergeFragments, withFreshness } from '../manifest/manifest.ts';
import { loadSigningKeys, loadVerifyKey, signManifestFile, SIGNING_KEY_ENV } from '../manifest/sign.ts';
import { verifyManifest } from '../manifest/verify.ts';
import { prepareOutputFile } from '../util/atomic.ts';
import { lineLogger } from '../util/log.ts';

/** Commander's collector for a repeatable option such as --key (undefined until the first one). */
export function collectValues(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

async function runMerge(fragments: string[], flags: { out: string }): Promise<void> {
  const loaded = [];
  for (const path of fragments) loaded.push({ path, manifest: (await loadManifest(path)).manifest });
  await prepareOutputFile(resolve(flags.out), '--out');
  // The manifest replaced keeps its serial, so the next `manifest sign` goes above it rather than back to 1.
  const previousSerial = await servedSerialOf(flags.out);
  const fragmentsMerged = mergeFragments(loaded);
  const merged = previousSerial === undefined ? fragmentsMerged : withFreshness(fragmentsMerged, { serial: previousSerial });
  const changed = await writeManifest(flags.out, merged);
  lineLogger().info(`${changed ? 'wrote' : 'unchanged'}: ${flags.out} (${merged.images.length} images from ${fragments.length} fragments)`);
}

async function runSign(manifest: string, flags: { key?: string[]; expires?: string; append?: boolean }): Promise<void> {
  const result = await signManifestFile(manifest, await loadSigningKeys(flags.key ?? []), { expires: flags.expires, append: flags.append });
  const signers = result.keyIds.join(', ');
  const log = lineLogger();
  log.info(flags.append
    ? `added the signature of ${signers} to ${result.signaturePath} (manifest unchanged: serial ${result.serial}, expires ${result.expires})`
    : `wrote ${manifest} (serial ${result.serial}, expires ${result.expires}) and ${result.signaturePath} (signed by ${signers})`);
  warnIfExpired(log, manifest, result.expires);
}

function parseMinSerial(text: string): number {
  const serial = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(serial)) throw new UsageError(`--min-serial takes a whole number, not "${text}"`);
  return serial;
}

interface VerifyFlags {
  key?: string[];
  minSerial?: number;
  state?: string;
  clockSkew: string;
}

async function runVerify(manifest: string, flags: VerifyFlags): Promise<void> {
  const log = lineLogger();
  const keys = [];
  for (const file of flags.key ?? []) keys.push(await loadVerifyKey(file));
  const result = await verifyManifest(manifest, { keys, minSerial: flags.minSerial, statePath: flags.state, clockSkewMs: clockSkewMs(flags.clockSkew) });
  if (!result.keyId) log.warn(`signature of ${manifest} not checked: pass --key PUBLIC_KEY to check it`);
  const details = [result.keyId && `key ${result.keyId}`, result.serial && `serial ${result.serial}`, result.expires && `expires ${result.expires}`].filter(Boolean);
  const suffix = details.length > 0 ? ` (${details.join(', ')})` : '';
  log.info(`${manifest}: ${result.keyId ? 'signature valid, ' : ''}${result.images} files match their size and sha256${suffix}`);
  if (flags.state) log.info(`recorded serial ${result.serial} in ${flags.state}`);
}

export function manifestCommand(): Command {
  // Subcommands inherit these settings when created, so usage errors exit 2 like everywhere else.
  const command = new Command('manifest')
    .description('merge build fragments into a manifest, sign it, verify it')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  command
    .command('merge')
    .description('join manifest fragments (from `rampack build --only`) into one manifest; conflicting cells are an error')
    .argument('<fragments...>', 'fragment files, e.g. out/fragments/*.json')
    .requiredOption('--out <file>', 'manifest to write, in the directory the fragments\' files are in (e.g. out/manifest.json)')
    .action(runMerge);
  command
    .command('sign')
    .description('give the manifest the next serial and an expiry, then write MANIFEST.sig: an Ed25519 signature per key over the manifest\'s bytes')
    .argument('<manifest>', 'manifest file')
    .option('--key <file>', `private key (PEM), repeatable: each key signs (old and new during a rotation); default: the PEM text in ${SIGNING_KEY_ENV}`, collectValues)
    .option('--expires <when>', `how long the signed manifest stays valid (12h, 30d, 2w) or until when (2027-01-03T00:00:00Z); default ${DEFAULT_VALIDITY}`)
    .option('--append', 'add these keys\' signatures to the existing MANIFEST.sig without changing the manifest (serial and expiry stay)')
    .addHelpText(
      'after',
      `
Every signing (without --append) sets serial = the manifest's serial + 1, so new content never reuses
or lowers a serial. See docs/manifest.md ("Freshness and rollback", "Signatures").

Examples:
  rampack manifest sign out/manifest.json --key rampack-signing.key --expires 30d
  rampack manifest sign out/manifest.json --key old.key --key new.key      # during a key rotation
  rampack manifest sign out/manifest.json --append --key new.key           # add a second signature`,
    )
    .action(runSign);
  command
    .command('verify')
    .description('check the signatures (with --key), expiry, serial (with --min-serial/--state) and every file\'s size and sha256; exit code 5 on a failure')
    .argument('<manifest>', 'manifest file')
    .option('--key <file>', 'trusted public key (PEM), repeatable: a signature by any of them is enough', collectValues)
    .option('--min-serial <n>', 'the last serial the runtime accepted: a lower serial is a rollback and refused', parseMinSerial)
    .option('--state <file>', 'JSON file with the last accepted serial: refuse a rollback, and record this manifest\'s serial once it passed')
    .option('--clock-skew <duration>', 'accept a manifest that expired at most this long ago (the reader\'s clock may lag)', '0s')
    .addHelpText(
      'after',
      `
With --key a manifest must carry serial and expires (\`rampack manifest sign\` sets both). An equal serial
with other bytes than those the state file recorded is refused too. See docs/manifest.md.

Examples:
  rampack manifest verify site/manifest.json --key rampack-signing.pub
  rampack manifest verify site/manifest.json --key old.pub --key new.pub --state /var/lib/vmm/manifest-state.json`,
    )
    .action(runVerify);
  return command;
}
