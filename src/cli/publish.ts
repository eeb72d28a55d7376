/** `rampack publish`: a manifest and its files into a directory a web server serves, or into a registry. */
import { resolve } from 'node:path';
import { Command } from 'commander';
import { UsageError } from '../errors.ts';
import { parseImageReference } from '../image/reference.ts';
import { loadSigningKey, SIGNING_KEY_ENV } from '../manifest/sign.ts';
import { publishToDirectory } from '../publish/directory.ts';
import { publishToRegistry } from '../publish/registry.ts';
import { prepareOutputDirectory } from '../util/atomic.ts';
import { createOutput } from './progress.ts';
import { addRegistryFlags, registryOptionsFrom, type RegistryFlags } from './registry-flags.ts';

interface PublishFlags extends RegistryFlags {
  to?: string;
  registry?: string;
  key?: string;
  prune?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

async function runPublish(manifest: string, flags: PublishFlags): Promise<void> {
  if (Boolean(flags.to) === Boolean(flags.registry)) throw new UsageError('give one destination: --to DIR or --registry HOST/REPO:TAG');
  if (flags.prune && flags.registry) throw new UsageError('--prune applies to --to DIR; a registry collects unreferenced blobs itself');
  if (!flags.registry && (flags.username || flags.passwordStdin || flags.caFile || flags.insecureRegistry.length > 0)) {
    throw new UsageError('--username, --password-stdin, --ca-file and --insecure-registry apply to --registry only');
  }
  const signingKey = flags.key || process.env[SIGNING_KEY_ENV] ? await loadSigningKey(flags.key) : undefined;
  const output = createOutput(flags);
  const log = output.log;
  const destination = flags.registry ?? resolve(flags.to!);
  if (flags.to) await prepareOutputDirectory(destination, '--to');
  let result: object = {};
  await output.runJobs([
    {
      label: `publish ${destination}`,
      stages: ['publish'],
      run: async (reporter) => {
        reporter.start('publish');
        if (flags.registry) {
          const push = { log, ...(await registryOptionsFrom(flags)) };
          const digest = await publishToRegistry(resolve(manifest), parseImageReference(flags.registry), { signingKey, log, push });
          result = { reference: flags.registry, digest };
          reporter.end('publish', `${flags.registry} (${digest})`);
        } else {
          const published = await publishToDirectory(resolve(manifest), destination, { signingKey, prune: flags.prune, log });
          result = published;
          reporter.end('publish', `${published.copied.length} files copied, ${published.reused.length} already there${signingKey ? ', signed' : ''}`);
        }
      },
    },
  ]);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

export function publishCommand(): Command {
  const command = new Command('publish')
    .description('publish a manifest and its initramfs files: to a directory (content-addressed files, manifest last) or to a registry as one OCI artifact')
    .argument('[manifest]', 'manifest to publish', 'out/manifest.json')
    .option('--to <dir>', 'destination directory (what a static web server or object store sync serves)')
    .option('--registry <ref>', 'destination registry repository and tag, HOST/REPO:TAG (credentials from --username/--password-stdin, else docker login)')
    .option('--key <file>', `sign the published manifest with this private key (default: ${SIGNING_KEY_ENV} when set)`)
    .option('--prune', 'with --to: remove files the new manifest does not name (readers of older manifests lose them)')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'print more detail');
  return addRegistryFlags(command)
    .addHelpText(
      'after',
      `
Directory layout: DIR/files/<language>-<version>-<arch>-<sha256>.cpio.<gz|zst>, DIR/manifest.json.sig,
DIR/manifest.json. Registry: an OCI artifact (artifactType application/vnd.rampack.manifest.v1+json)
whose layers are manifest.json, its signature and the initramfs files. See docs/publishing.md.

Examples:
  rampack publish out/manifest.json --to /srv/www/initramfs --key rampack-signing.key
  rampack publish --to ./site --prune
  rampack publish out/manifest.json --registry ghcr.io/org/initramfs:stable`,
    )
    .action(runPublish);
}
