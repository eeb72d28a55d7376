/** `rampack publish`: a manifest and its files into a directory a web server serves, or into a registry. */
import { resolve } from 'node:path';
import { Command } from 'commander';
import { UsageError } from '../errors.ts';
import { parseImageReference } from '../oci/reference.ts';
import { DEFAULT_VALIDITY, warnIfExpired } from '../manifest/freshness.ts';
import { loadSigningKeys, SIGNING_KEY_ENV } from '../manifest/sign.ts';
import { publishToDirectory } from '../publish/directory.ts';
import { pinnedReference, publishToRegistry } from '../publish/registry.ts';
import { collectValues } from './manifest.ts';
import { prepareOutputDirectory } from '../util/atomic.ts';
import { createOutput } from './progress.ts';
import { addRegistryFlags, registryOptionsFrom, type RegistryFlags } from './registry-flags.ts';

interface PublishFlags extends RegistryFlags {
  to?: string;
  registry?: string;
  key?: string[];
  expires?: string;
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
  const keyFiles = flags.key ?? [];
  const signingKeys = keyFiles.length > 0 || process.env[SIGNING_KEY_ENV] ? await loadSigningKeys(keyFiles) : [];
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
          const target = parseImageReference(flags.registry);
          const published = await publishToRegistry(resolve(manifest), target, { signingKeys, expires: flags.expires, log, push });
          result = { reference: flags.registry, pinned: pinnedReference(target, published.digest), ...published };
          reporter.end('publish', `${flags.registry} (${published.digest})`);
          warnIfExpired(log, `the manifest published at ${flags.registry}`, published.expires);
        } else {
          const published = await publishToDirectory(resolve(manifest), destination, { signingKeys, expires: flags.expires, prune: flags.prune, log });
          result = published;
          reporter.end('publish', `${published.copied.length} files copied, ${published.reused.length} already there${signingKeys.length > 0 ? ', signed' : ''}`);
          warnIfExpired(log, published.manifestPath, published.expires);
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
    .option('--key <file>', `sign the published manifest with this private key, repeatable (old and new during a rotation; default: ${SIGNING_KEY_ENV} when set)`, collectValues)
    .option('--expires <when>', `how long the published manifest stays valid (12h, 30d) or until when (RFC 3339); default ${DEFAULT_VALIDITY} when signed`)
    .option('--prune', 'with --to: remove files the new manifest does not name (readers of older manifests lose them)')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'print more detail');
  return addRegistryFlags(command)
    .addHelpText(
      'after',
      `
Directory layout: DIR/files/<language>-<version>-<arch>-<sha256>.cpio.<gz|zst>, DIR/manifest.json.sig,
DIR/manifest.json. Registry: an OCI artifact (artifactType application/vnd.rampack.manifest.v1+json)
whose layers are manifest.json, its signature and the initramfs files; readers select them by
mediaType. The published manifest's serial is one above both the source's and the one the
destination serves now. stdout is one JSON line: serial, expires and, for a registry, the pushed
digest and the pinned reference (HOST/REPO@sha256:...). See docs/publishing.md.

Examples:
  rampack publish out/manifest.json --to /srv/www/initramfs --key rampack-signing.key --expires 30d
  rampack publish --to ./site --prune
  rampack publish out/manifest.json --registry ghcr.io/org/initramfs:stable`,
    )
    .action(runPublish);
}
