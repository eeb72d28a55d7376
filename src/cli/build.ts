/** `rampack build`: recipes, or one image given by flags, to initramfs files and a manifest. */
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { buildTarget, targetLabel, type BuildOptions } from '../pipeline/build.ts';
import { Cache } from '../cache/cache.ts';
import { withCacheLease } from '../cache/lease.ts';
import { isLocalSource } from '../sources/open.ts';
import { COMPRESSIONS, type Compression } from '../compress/index.ts';
import { UsageError } from '../errors.ts';
import { parseByteSize } from '../inspect/size.ts';
import { parseImageReference } from '../oci/reference.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { FRAGMENTS_DIR, fragmentPath, MANIFEST_FILE, mergeImages, readManifest, writeFragment, writeManifest, type ManifestImage } from '../manifest/manifest.ts';
import { withPulledAgent } from '../recipe/agent-image.ts';
import { inputDigest, selectCells, withoutUntracedSlims } from '../recipe/plan.ts';
import { checkFlagValue, loadRecipe, recipeFiles, recipeTargets } from '../recipe/recipe.ts';
import type { BuildTarget } from '../pipeline/target.ts';
import { loadConfigMirrors, mergeMirrors, mirrorsFromFlags } from '../registry/mirrors.ts';
import { prepareOutputDirectory, removeStaleTemporaries } from '../util/atomic.ts';
import { createOutput } from './progress.ts';
import { addRegistryFlags, registryOptionsFrom, type RegistryFlags } from './registry-flags.ts';

interface BuildFlags extends RegistryFlags {
  image?: string;
  agent?: string;
  arch?: Arch;
  compression?: Compression;
  level?: number;
  shardSize?: number;
  language?: string;
  version?: string;
  env: string[];
  out: string;
  cache?: string;
  registryMirror: string[];
  config?: string;
  quiet?: boolean;
  verbose?: boolean;
  json?: boolean;
  only?: string;
}

const HOST_ARCH: Arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';

function parseLevel(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`--level must be a whole number, not "${text}"`);
  return Number(text);
}

/** Below this, per-shard overhead (a worker round trip, a codec restart) outweighs the parallelism. */
const MIN_SHARD_BYTES = 64 * 1024;

function parseShardSize(text: string): number {
  const bytes = parseByteSize(text, '--shard-size');
  if (bytes < MIN_SHARD_BYTES) throw new UsageError(`--shard-size must be at least 64KiB, not ${text}`);
  return bytes;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Flags that set what recipe fields set pass the recipe schema's rules for those fields. */
async function checkFieldFlags(flags: BuildFlags): Promise<void> {
  if (flags.language !== undefined) await checkFlagValue('--language', flags.language);
  if (flags.version !== undefined) await checkFlagValue('--version', flags.version);
  for (const variable of flags.env) await checkFlagValue('--env', variable);
  if (flags.level !== undefined) await checkFlagValue('--level', flags.level);
}

/** A target from --image and friends; language and version default from the reference. */
async function flagTarget(flags: BuildFlags): Promise<BuildTarget> {
  const image = flags.image!;
  const registryRef = isLocalSource(image) ? undefined : parseImageReference(image);
  const language = flags.language ?? registryRef?.repository.split('/').pop();
  const version = flags.version ?? registryRef?.tag;
  if (!language || !version) {
    throw new UsageError(`cannot tell the language and version of ${image}`, { hint: 'pass --language NAME --version V' });
  }
  // Taken from the reference, they become file names and manifest keys as much as the flags would.
  await checkFlagValue('--language', language, `language from ${image}`);
  await checkFlagValue('--version', version, `version from ${image}`);
  return {
    language,
    version,
    isDefault: true,
    arch: flags.arch ?? HOST_ARCH,
    image,
    agent: flags.agent && resolve(flags.agent),
    compression: flags.compression ?? 'gzip',
    level: flags.level,
    env: flags.env,
    origin: '--image',
  };
}

async function recipeTargetsFrom(paths: string[], flags: BuildFlags): Promise<BuildTarget[]> {
  const targets: BuildTarget[] = [];
  for (const file of await recipeFiles(paths)) {
    const recipe = await loadRecipe(file);
    for (const target of recipeTargets(recipe, file)) {
      if (flags.arch && target.arch !== flags.arch) continue;
      if (flags.version && target.version !== flags.version) continue;
      targets.push({
        ...target,
        agent: flags.agent ? resolve(flags.agent) : target.agent,
        compression: flags.compression ?? target.compression,
        level: flags.level ?? target.level,
        env: [...target.env, ...flags.env],
      });
    }
  }
  if (targets.length === 0) throw new UsageError('the recipes and filters leave nothing to build');
  return targets;
}

async function runBuild(paths: string[], flags: BuildFlags): Promise<void> {
  if (paths.length > 0 === Boolean(flags.image)) {
    throw new UsageError('give recipe files or directories, or --image REF --agent FILE, but not both');
  }
  await checkFieldFlags(flags);
  const output = createOutput(flags);
  const log = output.log;
  const selected = selectCells(flags.image ? [await flagTarget(flags)] : await recipeTargetsFrom(paths, flags), flags.only);
  const targets = flags.only ? selected : await withoutUntracedSlims(selected, (message) => log.warn(message));
  const outDir = resolve(flags.out);
  const sourceDateEpoch = process.env.SOURCE_DATE_EPOCH ? Number(process.env.SOURCE_DATE_EPOCH) : undefined;
  if (sourceDateEpoch !== undefined && !Number.isInteger(sourceDateEpoch)) {
    throw new UsageError(`SOURCE_DATE_EPOCH must be whole seconds, not "${process.env.SOURCE_DATE_EPOCH}"`);
  }
  const cache = new Cache(flags.cache, log);
  await prepareOutputDirectory(outDir, '--out');
  await prepareOutputDirectory(cache.root, '--cache');
  for (const dir of [outDir, join(outDir, FRAGMENTS_DIR)]) {
    for (const name of await removeStaleTemporaries(dir)) log.debug(`removed ${join(dir, name)}, left by a build that was stopped while writing`);
  }
  const options: BuildOptions = {
    outDir,
    cache,
    log,
    sourceDateEpoch,
    shardBytes: flags.shardSize,
    ...(await registryOptionsFrom(flags)),
    mirrors: mergeMirrors(await loadConfigMirrors(flags.config && resolve(flags.config)), mirrorsFromFlags(flags.registryMirror)),
  };
  const manifestPath = join(outDir, MANIFEST_FILE);
  const built: ManifestImage[] = [];
  // The lease keeps `cache prune` from removing what the builds use (cache/lease.ts).
  await withCacheLease(options.cache, () => output.runJobs(
    targets.map((target) => ({
      label: targetLabel(target),
      run: async (reporter) => {
        const image = await buildTarget(await withPulledAgent(target, options), { ...options, reporter });
        reporter.start('write');
        // A cell built alone writes only its fragment: parallel builds never share a manifest.
        const changed = flags.only
          ? await writeFragment(outDir, flags.only, image, await inputDigest(target))
          : await writeManifest(manifestPath, mergeImages(await readManifest(manifestPath), [image]));
        reporter.end('write', `${image.file}, ${changed ? 'updated' : 'unchanged'} ${flags.only ? fragmentPath(outDir, flags.only) : manifestPath}`);
        built.push(image);
      },
    })),
  ));
  if (flags.json) {
    const images = built.map((image) => ({ ...image, path: join(outDir, image.file) }));
    process.stdout.write(`${JSON.stringify({ manifest: manifestPath, images }, null, 2)}\n`);
  }
}

export function buildCommand(): Command {
  const command = new Command('build')
    .description('build initramfs images from recipes, or from one image given by --image')
    .argument('[recipes...]', 'recipe files, or directories of *.yaml recipes')
    .option('--image <ref>', 'image to build: registry reference (host/repo:tag, @sha256:...), oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]')
    .option('--agent <file>', 'agent binary to install as /init (overrides the recipe)')
    .addOption(new Option('--arch <arch>', 'architecture to build (with recipes: only this one)').choices(ARCHES))
    .addOption(new Option('--compression <codec>', 'initramfs compression').choices(COMPRESSIONS.filter((c) => c !== 'none')))
    .option('--level <n>', 'compression level (gzip 1-9, zstd 1-19)', parseLevel)
    .option('--shard-size <size>', 'uncompressed data per compressed shard of the image part, e.g. 8MiB (default 16MiB); shards are compressed in parallel, one per core', parseShardSize)
    .option('--language <name>', 'language name for the manifest (with --image)')
    .option('--version <v>', 'version for the manifest (with --image); with recipes: only this version')
    .option('--env <KEY=VALUE>', 'add or override an environment variable (repeatable)', collect, [])
    .option('--out <dir>', 'output directory for initramfs files and manifest.json', 'out')
    .option('--cache <dir>', 'blob and layer cache (default: ~/.cache/rampack)');
  return addRegistryFlags(command)
    .option('--registry-mirror <registry=url>', 'try this mirror before the registry, e.g. docker.io=http://127.0.0.1:5000 (repeatable)', (mirror: string, mirrors: string[]) => [...mirrors, mirror], [])
    .option('--config <file>', 'rampack config file with registryMirrors (default: ~/.config/rampack/config.yaml, if it exists)')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'print more detail (plain log lines, no task view)')
    .option('--only <key>', 'build only this cell of the recipes (a key from `rampack plan`) and write OUT/fragments/KEY.json instead of OUT/manifest.json')
    .option('--json', 'print the images built (manifest entries with their paths) as JSON on stdout')
    .addHelpText(
      'after',
      `
Examples:
  rampack build recipes/go.yaml
  rampack build recipes/ --arch x86_64
  rampack build --image 127.0.0.1:5000/library/golang:1.23 --agent agent-bin/x86_64/agent
  rampack build --image oci:./golang-layout:1.23 --agent ./agent --language go --version 1.23 --compression zstd
  rampack build recipes/ --json > built.json

In a terminal, progress is a task view per image and stage; in CI (CI is set), with --quiet or --verbose,
or when stderr is not a terminal, it is plain timestamped lines. NO_COLOR turns colors off.`,
    )
    .action(runBuild);
}
