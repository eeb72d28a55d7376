/**
 * `rampack slim RECIPE`: takes the trace a slim variant is built from, and
 * proves the slim image. For each cell of a recipe with a `slim:` section it
 * builds the full image, boots it with the slim tracer (native/guest/tracer.c)
 * running the smoke command and the workload, writes the trace file next to
 * the recipe (committed and reviewed; `rampack build` makes the slim variant
 * from it without booting), builds the slim variant, and boots that with the
 * same commands: a command that fails there fails with the paths it did not
 * find that the full image has.
 */
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { ensureDebianKernel } from '../boot/kernel.ts';
import { Cache } from '../cache/cache.ts';
import { withCacheLease } from '../cache/lease.ts';
import { buildTarget, targetLabel, type BuildOptions } from '../pipeline/build.ts';
import { UsageError, VerificationError } from '../errors.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { MANIFEST_FILE, mergeImages, readManifest, writeManifest, type ManifestImage } from '../manifest/manifest.ts';
import { withPulledAgent } from '../recipe/agent-image.ts';
import { loadRecipe, recipeFiles, recipeTargets } from '../recipe/recipe.ts';
import type { BuildTarget } from '../pipeline/target.ts';
import { prepareOutputDirectory } from '../util/atomic.ts';
import { formatBytes, lineLogger, type Logger } from '../util/log.ts';
import { writeTraceFile } from '../slim/trace-file.ts';
import { imagePaths, missingFromSlim, runTracer, workloadDigest, workloadMemoryMiB, WORKLOAD_HEADROOM_MIB, WORKLOAD_TIMEOUT_SECONDS, type TracerMode, type TracerRun } from '../slim/tracer.ts';
import { positiveNumber } from './format.ts';
import { addRegistryFlags, registryOptionsFrom, type RegistryFlags } from './registry-flags.ts';

interface SlimFlags extends RegistryFlags {
  arch?: Arch;
  version?: string;
  agent?: string;
  out: string;
  cache?: string;
  kernel?: string;
  memory?: number;
  timeout: number;
  quiet?: boolean;
  verbose?: boolean;
}

interface Context {
  options: BuildOptions;
  flags: SlimFlags;
  log: Logger;
}

function commandsOf(target: BuildTarget): string[][] {
  return [...(target.smoke ? [target.smoke] : []), ...target.slim!.workload];
}

async function boot(target: BuildTarget, image: ManifestImage, mode: TracerMode, { options, flags, log }: Context): Promise<TracerRun> {
  const kernel = flags.kernel ? resolve(flags.kernel) : await ensureDebianKernel(target.arch, options.cache);
  const memoryMiB = flags.memory ?? workloadMemoryMiB(image);
  log.info(`${targetLabel(target)}: booting ${image.file} with the tracer (${mode}, ${memoryMiB} MiB)`);
  return runTracer({
    arch: target.arch,
    kernel,
    initramfs: join(options.outDir, image.file),
    cmdline: image.boot.cmdline,
    commands: commandsOf(target),
    workloadFiles: target.slim!.workloadFiles,
    mode,
    cacheDir: options.cache.root,
    memoryMiB,
    timeoutMs: flags.timeout * 1000,
    onOutput: flags.verbose ? (chunk) => process.stderr.write(chunk) : undefined,
  });
}

/** Which commands failed, as "`go build ...` exit 1" phrases; empty when all passed. */
function failures(target: BuildTarget, run: TracerRun): string[] {
  const commands = commandsOf(target);
  const failed = commands.flatMap((command, i) => (run.exits[i] === 0 ? [] : [`\`${command.join(' ')}\` ${run.exits[i] === undefined ? 'did not finish' : `exit ${run.exits[i]}`}`]));
  if (run.error) failed.push(`tracer error: ${run.error}`);
  if (run.timedOut) failed.push('timed out');
  return failed;
}

async function traceAndProve(target: BuildTarget, context: Context): Promise<ManifestImage[]> {
  const { options, log } = context;
  const label = targetLabel(target);
  const full = await buildTarget(await withPulledAgent(target, options), options);
  const traced = await boot(target, full, 'trace', context);
  const failedFull = failures(target, traced);
  if (failedFull.length > 0) {
    log.warn(`${label}: console:\n${traced.output.slice(-4000)}`);
    throw new VerificationError(`${label}: the workload fails in the full image: ${failedFull.join('; ')}`, { hint: 'fix the recipe\'s slim.workload (run with --verbose to see the console)' });
  }
  const inImage = await imagePaths(join(options.outDir, full.file));
  const paths = traced.paths.map((path) => path.slice(1)).filter((path) => inImage.has(path));
  const traceFile = target.slim!.traceFile;
  await writeTraceFile(
    traceFile,
    { image: full.source.reference, manifestDigest: full.source.manifestDigest, configDigest: full.source.configDigest, workload: await workloadDigest(commandsOf(target), target.slim!.workloadFiles), paths },
    `the files the smoke command and slim.workload of ${target.origin} opened in ${label}`,
  );
  log.info(`${label}: wrote ${traceFile} (${paths.length} paths)`);
  const slim = await buildTarget(await withPulledAgent({ ...target, variant: 'slim' }, options), options);
  // The proof runs under fanotify, which costs little; only a failure boots again under ptrace ("missing" mode,
  // several times slower on a compiler) to learn which lookups failed.
  const proof = await boot(target, slim, 'trace', context);
  const failedSlim = failures(target, proof);
  if (failedSlim.length > 0) {
    log.warn(`${label} slim: console:\n${proof.output.slice(-4000)}`);
    const missing = missingFromSlim(await boot(target, slim, 'missing', context), inImage);
    throw new VerificationError(`${label} slim: ${failedSlim.join('; ')}${missing.length > 0 ? `; missing from the slim image: ${missing.join(', ')}` : ''}`, {
      hint: 'add what it needs to slim.keep in the recipe (globs), then run rampack slim again',
    });
  }
  log.info(`${label}: slim ${formatBytes(slim.uncompressedSize)} unpacked (${formatBytes(slim.size)} ${slim.compression}), full ${formatBytes(full.uncompressedSize)} (${formatBytes(full.size)}); every command passed in the slim image`);
  return [full, slim];
}

async function slimTargets(paths: string[], flags: SlimFlags): Promise<BuildTarget[]> {
  const targets: BuildTarget[] = [];
  for (const file of await recipeFiles(paths)) {
    const recipe = await loadRecipe(file);
    if (!recipe.slim) throw new UsageError(`recipe ${file} has no slim section`, { hint: 'add slim: {workload: [[CMD, ARGS...]], keep: [GLOB...]} (docs/recipe.md)' });
    for (const target of recipeTargets(recipe, file)) {
      if (target.variant || (flags.arch && target.arch !== flags.arch) || (flags.version && target.version !== flags.version)) continue;
      targets.push({ ...target, agent: flags.agent ? resolve(flags.agent) : target.agent });
    }
  }
  if (targets.length === 0) throw new UsageError('the recipes and filters leave nothing to trace');
  return targets;
}

async function runSlim(paths: string[], flags: SlimFlags): Promise<void> {
  const log = lineLogger(flags);
  const targets = await slimTargets(paths, flags);
  const outDir = resolve(flags.out);
  const options: BuildOptions = { outDir, cache: new Cache(flags.cache, log), log, ...(await registryOptionsFrom(flags)) };
  const manifestPath = join(outDir, MANIFEST_FILE);
  // One VM at a time: TCG emulation takes a core.
  await prepareOutputDirectory(outDir, '--out');
  // The lease keeps `cache prune` from removing what the builds use (cache/lease.ts).
  await withCacheLease(options.cache, async () => {
    for (const target of targets) {
      const images = await traceAndProve(target, { options, flags, log });
      await writeManifest(manifestPath, mergeImages(await readManifest(manifestPath), images));
    }
  });
}

export function slimCommand(): Command {
  const command = new Command('slim')
    .description('trace what a recipe\'s workload uses in the full image, write the trace, build the slim variant and prove it by booting')
    .argument('<recipes...>', 'recipe files (with a slim: section), or directories of them')
    .addOption(new Option('--arch <arch>', 'only this architecture').choices(ARCHES))
    .option('--version <v>', 'only this version')
    .option('--agent <file>', 'agent binary to install as /init (overrides the recipe)')
    .option('--out <dir>', 'output directory for the initramfs files and manifest.json', 'out')
    .option('--cache <dir>', 'blob, layer, kernel and tracer cache (default: ~/.cache/rampack)')
    .option('--kernel <path>', 'kernel image to boot (default: Debian\'s, fetched into the cache)')
    .option('--memory <MiB>', `VM memory (default: the entry's boot.minMemoryMiB + ${WORKLOAD_HEADROOM_MIB} MiB for the workload)`, positiveNumber('--memory'))
    .option('--timeout <seconds>', 'give up on a VM after this long', positiveNumber('--timeout'), WORKLOAD_TIMEOUT_SECONDS);
  return addRegistryFlags(command)
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'also print the VM console')
    .addHelpText(
      'after',
      `
The trace goes to the recipe's slim.trace (default traces/LANGUAGE-VERSION-ARCH.trace next to the recipe);
commit it: \`rampack build RECIPE\` builds the slim variant from it without booting. Exits 5 when the
workload fails in the full image or in the slim one (naming the paths the slim image lacks when the
tracer saw them looked up).

Examples:
  rampack slim recipes/python.yaml --arch x86_64 --version 3.15
  rampack slim recipes/go.yaml --verbose`,
    )
    .action(runSlim);
}
