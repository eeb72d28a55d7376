/**
 * `rampack verify --boot`: boots built initramfs images in QEMU with a stock
 * kernel, the way CI checks images before publishing: the exact published
 * file, with the entry's boot.cmdline and boot.minMemoryMiB, a probe init
 * standing in for whatever agent is inside (src/boot/check.ts); on a slim
 * variant also the recipe's slim.workload (src/slim/verify.ts). With
 * --find-min-memory it measures the smallest memory each image boots in.
 */
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { DEFAULT_BOOT_TIMEOUT_SECONDS, findMinimumMemory, type BootCheck, type BootCheckOptions, type BootTarget, type MemorySearch } from '../boot/check.ts';
import { ensureDebianKernel } from '../boot/kernel.ts';
import { checkQemu } from '../boot/qemu.ts';
import { bootTargets } from '../boot/targets.ts';
import { WORKLOAD_HEADROOM_MIB } from '../boot/memory.ts';
import { InputError, UsageError, VerificationError } from '../errors.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { loadRecipe, recipeTargets } from '../recipe/recipe.ts';
import { WORKLOAD_HEADROOM_MIB as SLIM_WORKLOAD_HEADROOM_MIB, WORKLOAD_TIMEOUT_SECONDS, type Workload } from '../slim/tracer.ts';
import { checkImageBoot } from '../slim/verify.ts';
import { Cache } from '../cache/cache.ts';
import { formatDuration, lineLogger, type Logger } from '../util/log.ts';
import { positiveNumber, printJson, printLines } from './format.ts';

interface VerifyFlags {
  boot?: boolean;
  smoke?: string;
  recipe?: string;
  kernel: string[];
  arch?: Arch;
  cache?: string;
  timeout?: number;
  memory?: number;
  findMinMemory?: boolean;
  step: number;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

function collectKernel(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** --kernel PATH (every arch) or --kernel ARCH=PATH. */
function kernelFlags(values: readonly string[]): { byArch: Partial<Record<Arch, string>>; all?: string } {
  const byArch: Partial<Record<Arch, string>> = {};
  let all: string | undefined;
  for (const value of values) {
    const match = /^(x86_64|aarch64)=(.+)$/.exec(value);
    if (match) byArch[match[1] as Arch] = resolve(match[2]!);
    else all = resolve(value);
  }
  return { byArch, all };
}

interface RecipeSettings {
  smoke: string[];
  language?: string;
  /** Kernels the recipe names, by arch. */
  kernels?: Partial<Record<Arch, string>>;
  /** The recipe's slim.workload and slim.files: run on slim variants after the smoke command. */
  workload?: Workload;
}

async function recipeSettings(flags: VerifyFlags): Promise<RecipeSettings> {
  if (flags.smoke !== undefined) {
    const smoke = flags.smoke.trim().split(/\s+/).filter(Boolean);
    if (smoke.length === 0) throw new UsageError('--smoke is empty', { hint: 'give a command, e.g. --smoke "python3 --version"' });
    return { smoke };
  }
  if (flags.recipe === undefined) {
    throw new UsageError('no smoke command', { hint: 'pass --smoke "CMD ARGS" or --recipe FILE (with a smoke: field)' });
  }
  const recipe = await loadRecipe(flags.recipe);
  if (!recipe.smoke) {
    throw new InputError(`recipe ${flags.recipe} has no smoke command`, { hint: 'add smoke: [CMD, ARGS...] to it, or pass --smoke "CMD ARGS"' });
  }
  const workload = recipeTargets(recipe, flags.recipe).find((target) => target.slim)?.slim;
  return { smoke: recipe.smoke, language: recipe.language, kernels: recipe.kernel, ...(workload === undefined ? {} : { workload }) };
}

/** The targets the paths name, filtered by --arch and the recipe's language. */
async function chosenTargets(paths: readonly string[], flags: VerifyFlags, language: string | undefined): Promise<BootTarget[]> {
  const targets = await bootTargets(paths, flags.arch);
  const chosen = targets.filter((target) => (!flags.arch || target.arch === flags.arch) && (!language || !target.language || target.language === language));
  if (chosen.length === 0) throw new UsageError('nothing to boot: the --arch and --recipe filters leave no image');
  return chosen;
}

/** --kernel flags first, then the recipe's kernel, then Debian's stock kernel. */
function kernelFor(arch: Arch, flags: VerifyFlags, recipeKernels: RecipeSettings['kernels']): Promise<string> {
  const { byArch, all } = kernelFlags(flags.kernel);
  const recipeKernel = recipeKernels?.[arch];
  const given = byArch[arch] ?? all ?? (recipeKernel === undefined ? undefined : resolve(recipeKernel));
  if (given !== undefined) return Promise.resolve(given);
  return ensureDebianKernel(arch, new Cache(flags.cache));
}

function resultLine(check: BootCheck): string {
  const started = check.initStartedMs === null ? 'init never started' : `init started in ${formatDuration(check.initStartedMs)}`;
  const ran = check.runs.map((run) => `\`${run.command.join(' ')}\` exit ${run.exit}`).join(', ');
  const outcome = check.passed ? ran : `${check.failure!.kind}: ${check.failure!.message}`;
  return `${check.passed ? 'PASS' : 'FAIL'} ${check.label} (${check.file}) at ${check.memoryMiB} MiB: ${started}, ${outcome}; ${formatDuration(check.durationMs)} in all`;
}

function searchLine(search: MemorySearch): string {
  if (search.measuredMiB === null) return `FAIL ${search.label}: does not boot even at ${search.failedMiB} MiB (${search.failure?.kind}: ${search.failure?.message})`;
  const margin = Math.round(((search.publishedMiB - search.measuredMiB) / search.measuredMiB) * 100);
  const below = search.failedMiB === null ? '' : `, fails at ${search.failedMiB} MiB (${search.failure!.kind})`;
  return (
    `${search.publishedMiB >= search.measuredMiB ? 'MIN' : 'UNSAFE'} ${search.label}: boots at ${search.measuredMiB} MiB${below}; ` +
    `published boot.minMemoryMiB ${search.publishedMiB} (${margin >= 0 ? '+' : ''}${margin}%), ${search.trials.length} boots`
  );
}

interface Context {
  settings: RecipeSettings;
  flags: VerifyFlags;
  log: Logger;
  cacheDir: string;
}

function checkOptions(kernel: string, { settings, flags, log, cacheDir }: Context, target: BootTarget): BootCheckOptions {
  return {
    kernel,
    smoke: settings.smoke,
    memoryMiB: flags.memory,
    cacheDir,
    ...(flags.timeout === undefined ? {} : { timeoutMs: flags.timeout * 1000 }),
    onConsole: (chunk: string) => {
      for (const line of chunk.split(/\r?\n/).filter(Boolean)) log.debug(`${target.label}: console: ${line}`);
    },
  };
}

async function verifyBoots(targets: readonly BootTarget[], context: Context): Promise<void> {
  const { flags, log } = context;
  const checks: BootCheck[] = [];
  // One VM at a time: TCG emulation takes a core, and boot times are only comparable alone.
  for (const target of targets) {
    const kernel = await kernelFor(target.arch, flags, context.settings.kernels);
    log.info(`${target.label}: booting ${target.file} with ${kernel}`);
    const check = await checkImageBoot(target, checkOptions(kernel, context, target), context.settings.workload);
    checks.push(check);
    if (!flags.json) printLines([resultLine(check)]);
    const failed = check.runs.find((run) => run.exit !== 0);
    if (failed?.output) log.warn(`${check.label}: output of \`${failed.command.join(' ')}\`:\n${failed.output}`);
  }
  if (flags.json) printJson(checks);
  const failed = checks.filter((check) => !check.passed);
  if (failed.length > 0) {
    throw new VerificationError(`${failed.length} of ${checks.length} images failed the boot check: ${failed.map((check) => check.label).join(', ')}`, {
      hint: 'run with --verbose to see the VM console',
    });
  }
}

async function searchMemory(targets: readonly BootTarget[], context: Context): Promise<void> {
  const { flags, log } = context;
  const searches: MemorySearch[] = [];
  for (const target of targets) {
    const kernel = await kernelFor(target.arch, flags, context.settings.kernels);
    log.info(`${target.label}: bisecting the memory ${target.file} boots in, with ${kernel}`);
    const options = { ...checkOptions(kernel, context, target), memoryMiB: undefined, upperMiB: flags.memory, stepMiB: flags.step };
    const search = await findMinimumMemory(target, options);
    for (const trial of search.trials) log.info(`${target.label}: ${trial.memoryMiB} MiB ${trial.passed ? 'boots' : `fails (${trial.failure})`} in ${formatDuration(trial.durationMs)}`);
    searches.push(search);
    if (!flags.json) printLines([searchLine(search)]);
  }
  if (flags.json) printJson(searches);
  const unsafe = searches.filter((search) => search.measuredMiB === null || search.measuredMiB > search.publishedMiB);
  if (unsafe.length > 0) {
    throw new VerificationError(`${unsafe.length} of ${searches.length} images need more memory than their boot.minMemoryMiB: ${unsafe.map((search) => search.label).join(', ')}`, {
      hint: 'the memory rule (src/boot/memory.ts) is too low for these images: recalibrate it',
    });
  }
}

async function runVerify(paths: string[], flags: VerifyFlags): Promise<void> {
  if (!flags.boot) throw new UsageError('verify needs --boot (booting is the only check it makes)', { hint: 'rampack verify --boot out/manifest.json --smoke "CMD"' });
  const log = lineLogger(flags);
  const settings = await recipeSettings(flags);
  const targets = await chosenTargets(paths, flags, settings.language);
  for (const arch of new Set(targets.map((target) => target.arch))) checkQemu(arch);
  const context = { settings, flags, log, cacheDir: new Cache(flags.cache, log).root };
  if (flags.findMinMemory) await searchMemory(targets, context);
  else await verifyBoots(targets, context);
}

export function verifyCommand(): Command {
  return new Command('verify')
    .description('boot the published images in QEMU as the manifest says, and run a smoke command in each, before publishing')
    .argument('<manifest-or-file...>', 'out/manifest.json (or its directory) or initramfs files')
    .option('--boot', 'boot each image and run the smoke command (required)')
    .option('--smoke <command>', 'smoke command, split on spaces (e.g. "python3 --version")')
    .option('--recipe <file>', "take the smoke command from this recipe's smoke field, and a slim variant's workload from its slim section (only boot its language)")
    .option('--kernel <[arch=]path>', 'kernel image to boot (repeatable, e.g. --kernel aarch64=./Image); default: Debian\'s, fetched into the cache', collectKernel, [])
    .addOption(new Option('--arch <arch>', 'boot only this architecture (needed for a file without /etc/rampack/image.json)').choices(ARCHES))
    .option('--cache <dir>', 'cache directory: Debian kernels under <dir>/kernels, the compiled probe under <dir>/helper-inits (default: ~/.cache/rampack)')
    .option('--timeout <seconds>', `give up on a VM after this long (default: ${DEFAULT_BOOT_TIMEOUT_SECONDS}; ${WORKLOAD_TIMEOUT_SECONDS} for a slim variant running the workload)`, positiveNumber('--timeout'))
    .option('--memory <MiB>', `VM memory (default: the entry's boot.minMemoryMiB, + ${SLIM_WORKLOAD_HEADROOM_MIB} MiB for a slim variant running the workload); with --find-min-memory, the upper bound to start from`, positiveNumber('--memory'))
    .option('--find-min-memory', 'bisect the smallest memory each image boots in and runs the smoke command, and compare it with boot.minMemoryMiB')
    .option('--step <MiB>', 'precision of --find-min-memory', positiveNumber('--step'), 8)
    .option('--json', 'print the results as JSON on stdout')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'also print the VM console')
    .addHelpText(
      'after',
      `
Each image boots exactly as published: the file the manifest names, the entry's boot.cmdline, and
boot.minMemoryMiB of RAM (--memory overrides). A probe init (native/guest/probe.c, compiled for the
arch with musl-gcc or aarch64-linux-gnu-gcc at first use) is appended to a temporary copy as one more
cpio archive and started with rdinit= instead of the agent, so any agent can be verified: the probe
checks that /init is an executable ELF for the arch, runs the smoke command with the image's env,
working directory and user, then fills a ${WORKLOAD_HEADROOM_MIB} MiB workload, and reports on the console.
An image passes when all of it succeeds; a failed unpack, an out-of-memory or a panic is reported with
the memory the VM had. QEMU runs under TCG (no KVM): qemu-system-x86_64 for x86_64,
qemu-system-aarch64 -M virt for aarch64. Exits 5 when an image fails (with --find-min-memory: when an
image needs more than its boot.minMemoryMiB).

With --recipe and a recipe that has a slim: section, each slim variant (an entry with "variant": "slim")
also runs every slim.workload command after the smoke command, one after the other until one fails,
with the slim.files directory at /.rampack-probe/workload, loopback up, and boot.minMemoryMiB +
${SLIM_WORKLOAD_HEADROOM_MIB} MiB of RAM (what \`rampack slim\` gives the workload). When a command fails on a slim
variant, the image boots once more under the slim tracer (ptrace) to name the paths the command looked
up that the full image (its entry in the same manifest) has and the slim one lacks. Full images run
the smoke command only: \`rampack slim\` runs the workload in them when it traces.

Examples:
  rampack verify --boot out/manifest.json --recipe recipes/python.yaml    # slim variants run slim.workload too
  rampack verify --boot out/ --smoke "go version" --arch aarch64
  rampack verify --boot out/manifest.json --smoke "go version" --find-min-memory --step 4 --json
  rampack verify --boot out/node-22-x86_64.cpio.gz --smoke "node -e 1" --kernel ./vmlinuz --json`,
    )
    .action(runVerify);
}
