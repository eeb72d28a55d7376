/** `rampack build`: recipes, or one image given by flags, to initramfs files and a manifest. */
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { buildTarget, type BuildOptions } from '../build/build.ts';
import { COMPRESSIONS, type Compression } from '../compress/index.ts';
import { UsageError } from '../errors.ts';
import { parseImageReference } from '../image/reference.ts';
import { ARCHES, type Arch } from '../image/source.ts';
import { MANIFEST_FILE, mergeImages, readManifest, writeManifest } from '../manifest/manifest.ts';
import { loadRecipe, recipeFiles, recipeTargets, type BuildTarget } from '../recipe/recipe.ts';
import { defaultCacheDir } from '../registry/cache.ts';
import { lineLogger, type Logger } from '../util/log.ts';

interface BuildFlags {
  image?: string;
  agent?: string;
  arch?: Arch;
  compression?: Compression;
  level?: number;
  language?: string;
  version?: string;
  env: string[];
  out: string;
  cache?: string;
  username?: string;
  passwordStdin?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

const HOST_ARCH: Arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';

function parseLevel(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`--level must be a whole number, not "${text}"`);
  return Number(text);
}

function collect(value: string, previous: string[]): string[] {
  if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(value)) throw new UsageError(`--env takes KEY=VALUE, not "${value}"`);
  return [...previous, value];
}

/** A target from --image and friends; language and version default from the reference. */
function flagTarget(flags: BuildFlags): BuildTarget {
  const image = flags.image!;
  const registryRef = image.startsWith('oci:') ? undefined : parseImageReference(image);
  const language = flags.language ?? registryRef?.repository.split('/').pop();
  const version = flags.version ?? registryRef?.tag;
  if (!language || !version) {
    throw new UsageError(`cannot tell the language and version of ${image}`, { hint: 'pass --language NAME --version V' });
  }
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

async function readPassword(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

async function runBuild(paths: string[], flags: BuildFlags): Promise<void> {
  if (paths.length > 0 === Boolean(flags.image)) {
    throw new UsageError('give recipe files or directories, or --image REF --agent FILE, but not both');
  }
  const log: Logger = lineLogger(flags);
  const targets = flags.image ? [flagTarget(flags)] : await recipeTargetsFrom(paths, flags);
  const outDir = resolve(flags.out);
  const sourceDateEpoch = process.env.SOURCE_DATE_EPOCH ? Number(process.env.SOURCE_DATE_EPOCH) : undefined;
  if (sourceDateEpoch !== undefined && !Number.isInteger(sourceDateEpoch)) {
    throw new UsageError(`SOURCE_DATE_EPOCH must be whole seconds, not "${process.env.SOURCE_DATE_EPOCH}"`);
  }
  const options: BuildOptions = {
    outDir,
    cacheDir: resolve(flags.cache ?? defaultCacheDir()),
    log,
    sourceDateEpoch,
    username: flags.username,
    password: flags.passwordStdin ? await readPassword() : undefined,
  };
  const manifestPath = join(outDir, MANIFEST_FILE);
  for (const target of targets) {
    const image = await buildTarget(target, options);
    const changed = await writeManifest(manifestPath, mergeImages(await readManifest(manifestPath), [image]));
    log.info(`${changed ? 'updated' : 'unchanged'}: ${manifestPath}`);
  }
}

export function buildCommand(): Command {
  return new Command('build')
    .description('build initramfs images from recipes, or from one image given by --image')
    .argument('[recipes...]', 'recipe files, or directories of *.yaml recipes')
    .option('--image <ref>', 'image to build: registry reference (host/repo:tag, @sha256:...) or oci:DIR[:TAG]')
    .option('--agent <file>', 'agent binary to install as /init (overrides the recipe)')
    .addOption(new Option('--arch <arch>', 'architecture to build (with recipes: only this one)').choices(ARCHES))
    .addOption(new Option('--compression <codec>', 'initramfs compression').choices(COMPRESSIONS.filter((c) => c !== 'none')))
    .option('--level <n>', 'compression level (gzip 1-9, zstd 1-19)', parseLevel)
    .option('--language <name>', 'language name for the manifest (with --image)')
    .option('--version <v>', 'version for the manifest (with --image); with recipes: only this version')
    .option('--env <KEY=VALUE>', 'add or override an environment variable (repeatable)', collect, [])
    .option('--out <dir>', 'output directory for initramfs files and manifest.json', 'out')
    .option('--cache <dir>', 'blob and layer cache (default: ~/.cache/rampack)')
    .option('--username <user>', 'registry user name')
    .option('--password-stdin', 'read the registry password from standard input')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'print more detail')
    .addHelpText(
      'after',
      `
Examples:
  rampack build recipes/go.yaml
  rampack build recipes/ --arch x86_64
  rampack build --image 127.0.0.1:5000/library/golang:1.23 --agent agent-bin/x86_64/agent
  rampack build --image oci:./golang-layout:1.23 --agent ./agent --language go --version 1.23 --compression zstd`,
    )
    .action(runBuild);
}
