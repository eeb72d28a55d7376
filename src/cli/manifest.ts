/** `rampack manifest merge | sign | verify`. */
import { resolve } from 'node:path';
import { Command } from 'commander';
import { loadManifest, writeManifest, mergeFragments } from '../manifest/manifest.ts';
import { loadSigningKey, loadVerifyKey, signManifestFile } from '../manifest/sign.ts';
import { verifyManifest } from '../manifest/verify.ts';
import { prepareOutputFile } from '../util/atomic.ts';
import { lineLogger } from '../util/log.ts';

async function runMerge(fragments: string[], flags: { out: string }): Promise<void> {
  const loaded = [];
  for (const path of fragments) loaded.push({ path, manifest: (await loadManifest(path)).manifest });
  const merged = mergeFragments(loaded);
  await prepareOutputFile(resolve(flags.out), '--out');
  const changed = await writeManifest(flags.out, merged);
  lineLogger().info(`${changed ? 'wrote' : 'unchanged'}: ${flags.out} (${merged.images.length} images from ${fragments.length} fragments)`);
}

async function runSign(manifest: string, flags: { key?: string }): Promise<void> {
  const signature = await signManifestFile(manifest, await loadSigningKey(flags.key));
  lineLogger().info(`wrote ${signature}`);
}

async function runVerify(manifest: string, flags: { key?: string }): Promise<void> {
  const log = lineLogger();
  const result = await verifyManifest(manifest, flags.key ? await loadVerifyKey(flags.key) : undefined);
  if (!result.signatureChecked) log.warn(`signature of ${manifest} not checked: pass --key PUBLIC_KEY to check it`);
  log.info(`${manifest}: ${result.signatureChecked ? 'signature valid, ' : ''}${result.images} files match their size and sha256`);
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
    .description('write MANIFEST.sig: an Ed25519 signature over the manifest\'s bytes')
    .argument('<manifest>', 'manifest file')
    .option('--key <file>', 'private key (PEM); default: the PEM text in RAMPACK_SIGNING_KEY')
    .action(runSign);
  command
    .command('verify')
    .description('check the signature (with --key) and every file\'s size and sha256; exit code 5 on a mismatch')
    .argument('<manifest>', 'manifest file')
    .option('--key <file>', 'public key (PEM) the signature must verify with')
    .action(runVerify);
  return command;
}
