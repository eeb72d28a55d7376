/**
 * `rampack verify --boot`: boots built initramfs images in QEMU with a stock
 * kernel and runs a smoke command through the agent, the way CI checks images
 * before publishing. The agent contract is the test agent's
 * (test/fixtures/agent.c): it prints "RAMPACK-AGENT ready" when it starts,
 * runs `run CMD ARGS...` from its kernel command line, prints
 * "RAMPACK-RUN exit=N" and "RAMPACK-AGENT done", and powers off.
 */
import { stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { ensureDebianKernel } from '../boot/kernel.ts';
import { bootInitramfs, checkQemu } from '../boot/qemu.ts';
import { InputError, UsageError, VerificationError } from '../errors.ts';
import { ARCHES, type Arch } from '../image/source.ts';
import { readInitramfs } from '../inspect/initramfs.ts';
import { MANIFEST_FILE, readManifest } from '../manifest/manifest.ts';
import { loadRecipe } from '../recipe/recipe.ts';
import { Cache } from '../cache/cache.ts';
import { formatDuration, lineLogger, type Logger } from '../util/log.ts';
import { printJson, printLines } from './format.ts';

interface VerifyFlags {
  boot?: boolean;
  smoke?: string;
  recipe?: string;
  kernel: string[];
  arch?: Arch;
  cache?: string;
  timeout: number;
  memory: number;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

/** One initramfs to boot. */
interface BootTarget {
  label: string;
  file: string;
  arch: Arch;
  language?: string;
}

export interface BootCheck {
  label: string;
  file: string;
  arch: Arch;
  kernel: string;
  smoke: string[];
  passed: boolean;
  /** Why it failed. */
  reason?: string;
  /** From starting QEMU to the agent's ready line; null when it never came. */
  agentReadyMs: number | null;
  /** The guest's uptime when the agent started, as the agent reports it. */
  guestUptimeSeconds: number | null;
  smokeExit: number | null;
  /** What the smoke command printed. */
  smokeOutput: string;
  durationMs: number;
}

const READY = /^RAMPACK-AGENT ready pid=\d+ uptime=([\d.]+|-)$/m;
const RUN_EXIT = /^RAMPACK-RUN exit=(\d+)$/m;
const AGENT_ERROR = /^RAMPACK-AGENT error: (.*)$/m;
const DONE = /^RAMPACK-AGENT done$/m;

function positiveNumber(flag: string): (text: string) => number {
  return (text) => {
    if (!/^[1-9]\d*$/.test(text)) throw new UsageError(`${flag} must be a positive whole number, not "${text}"`);
    return Number(text);
  };
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
  return { smoke: recipe.smoke, language: recipe.language, kernels: recipe.kernel };
}

async function manifestTargets(manifestPath: string): Promise<BootTarget[]> {
  const manifest = await readManifest(manifestPath);
  if (manifest.images.length === 0) throw new InputError(`manifest ${manifestPath} lists no images`, { hint: 'run rampack build first' });
  return manifest.images.map((image) => ({
    label: `${image.language} ${image.version} ${image.arch}`,
    file: join(dirname(manifestPath), image.file),
    arch: image.arch,
    language: image.language,
  }));
}

/** An initramfs file on its own: its arch from --arch, else from its /etc/rampack/image.json. */
async function fileTarget(file: string, arch: Arch | undefined): Promise<BootTarget> {
  const image = (await readInitramfs(file)).imageJson as { language?: string; version?: string; arch?: string } | undefined;
  const chosen = arch ?? image?.arch;
  if (!ARCHES.includes(chosen as Arch)) {
    throw new InputError(`cannot tell the architecture of ${file}: it has no /etc/rampack/image.json naming one`, { hint: 'pass --arch x86_64 or --arch aarch64' });
  }
  return { label: image ? `${image.language} ${image.version} ${chosen}` : basename(file), file, arch: chosen as Arch, language: image?.language };
}

async function bootTargets(paths: readonly string[], flags: VerifyFlags, language: string | undefined): Promise<BootTarget[]> {
  const targets: BootTarget[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => {
      throw new InputError(`${path} does not exist`, { hint: 'pass out/manifest.json, an output directory, or an initramfs file' });
    });
    const manifestPath = info.isDirectory() ? join(path, MANIFEST_FILE) : path;
    if (info.isDirectory() || path.endsWith('.json')) targets.push(...(await manifestTargets(manifestPath)));
    else targets.push(await fileTarget(path, flags.arch));
  }
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
  return ensureDebianKernel(arch, new Cache(flags.cache).folder('kernels'));
}

/** Lines the smoke command printed: between the ready line and its exit line. */
function smokeOutputOf(screen: string): string {
  const start = screen.search(READY);
  const end = screen.search(RUN_EXIT);
  if (start < 0 || end < 0) return '';
  return screen.slice(screen.indexOf('\n', start) + 1, end).trimEnd();
}

function failureReason(screen: string, timedOut: boolean, timeoutMs: number, smokeExit: number | null): string | undefined {
  const agentError = AGENT_ERROR.exec(screen)?.[1];
  if (agentError) return `the agent failed: ${agentError}`;
  if (!READY.test(screen)) {
    const tail = screen.trim().split('\n').slice(-3).join(' / ');
    return `${timedOut ? `no agent after ${formatDuration(timeoutMs)}` : 'the VM stopped before the agent started'}; console ends: ${tail || '(nothing)'}`;
  }
  if (smokeExit === null) return timedOut ? `the smoke command did not finish within ${formatDuration(timeoutMs)}` : 'the smoke command did not report an exit status';
  if (smokeExit !== 0) return `the smoke command exited ${smokeExit}`;
  if (!DONE.test(screen)) return 'the agent did not finish';
  return undefined;
}

async function bootCheck(target: BootTarget, { smoke, kernels }: RecipeSettings, flags: VerifyFlags, log: Logger): Promise<BootCheck> {
  checkQemu(target.arch);
  const kernel = await kernelFor(target.arch, flags, kernels);
  log.info(`${target.label}: booting ${target.file} with ${kernel}`);
  const started = performance.now();
  let agentReadyMs: number | null = null;
  let screen = '';
  const boot = await bootInitramfs({
    arch: target.arch,
    kernel,
    initrd: target.file,
    agentArgs: ['run', ...smoke],
    memoryMiB: flags.memory,
    timeoutMs: flags.timeout * 1000,
    onOutput: (chunk) => {
      screen += chunk.replace(/\r/g, '');
      if (agentReadyMs === null && READY.test(screen)) agentReadyMs = Math.round(performance.now() - started);
      for (const line of chunk.split(/\r?\n/).filter(Boolean)) log.debug(`${target.label}: console: ${line}`);
    },
  });
  const exit = RUN_EXIT.exec(boot.output)?.[1];
  const smokeExit = exit === undefined ? null : Number(exit);
  const reason = failureReason(boot.output, boot.timedOut, flags.timeout * 1000, smokeExit);
  const uptime = READY.exec(boot.output)?.[1];
  return {
    label: target.label,
    file: target.file,
    arch: target.arch,
    kernel,
    smoke,
    passed: reason === undefined,
    ...(reason === undefined ? {} : { reason }),
    agentReadyMs,
    guestUptimeSeconds: uptime === undefined || uptime === '-' ? null : Number(uptime),
    smokeExit,
    smokeOutput: smokeOutputOf(boot.output),
    durationMs: Math.round(performance.now() - started),
  };
}

function resultLine(check: BootCheck): string {
  const ready = check.agentReadyMs === null ? 'agent never ready' : `agent ready in ${formatDuration(check.agentReadyMs)}`;
  const outcome = check.passed ? `\`${check.smoke.join(' ')}\` exit 0` : check.reason;
  return `${check.passed ? 'PASS' : 'FAIL'} ${check.label} (${check.file}): ${ready}, ${outcome}; ${formatDuration(check.durationMs)} in all`;
}

async function runVerify(paths: string[], flags: VerifyFlags): Promise<void> {
  if (!flags.boot) throw new UsageError('verify needs --boot (booting is the only check it makes)', { hint: 'rampack verify --boot out/manifest.json --smoke "CMD"' });
  const log = lineLogger(flags);
  const settings = await recipeSettings(flags);
  const targets = await bootTargets(paths, flags, settings.language);
  const checks: BootCheck[] = [];
  // One VM at a time: TCG emulation takes a core, and boot times are only comparable alone.
  for (const target of targets) {
    const check = await bootCheck(target, settings, flags, log);
    checks.push(check);
    if (!flags.json) printLines([resultLine(check)]);
    if (!check.passed && check.smokeOutput) log.warn(`${check.label}: smoke output:\n${check.smokeOutput}`);
  }
  if (flags.json) printJson(checks);
  const failed = checks.filter((check) => !check.passed);
  if (failed.length > 0) {
    throw new VerificationError(`${failed.length} of ${checks.length} images failed the boot check: ${failed.map((check) => check.label).join(', ')}`, {
      hint: 'run with --verbose to see the VM console',
    });
  }
}

export function verifyCommand(): Command {
  return new Command('verify')
    .description('boot built images in QEMU and run a smoke command through the agent, before publishing')
    .argument('<manifest-or-file...>', 'out/manifest.json (or its directory) or initramfs files')
    .option('--boot', 'boot each image and run the smoke command (required)')
    .option('--smoke <command>', 'smoke command, split on spaces (e.g. "python3 --version")')
    .option('--recipe <file>', "take the smoke command from this recipe's smoke field (and only boot its language)")
    .option('--kernel <[arch=]path>', 'kernel image to boot (repeatable, e.g. --kernel aarch64=./Image); default: Debian\'s, fetched into the cache', collectKernel, [])
    .addOption(new Option('--arch <arch>', 'boot only this architecture (needed for a file without /etc/rampack/image.json)').choices(ARCHES))
    .option('--cache <dir>', 'cache directory; Debian kernels go under <dir>/kernels (default: ~/.cache/rampack)')
    .option('--timeout <seconds>', 'give up on a VM after this long', positiveNumber('--timeout'), 300)
    .option('--memory <MiB>', 'VM memory', positiveNumber('--memory'), 512)
    .option('--json', 'print the results as JSON on stdout')
    .option('-q, --quiet', 'print warnings and errors only')
    .option('-v, --verbose', 'also print the VM console')
    .addHelpText(
      'after',
      `
The agent must follow the rampack test-agent contract (test/fixtures/agent.c, docs/cli.md): it reads
"run CMD ARGS..." after "--" on its kernel command line, prints "RAMPACK-AGENT ready" when it starts,
"RAMPACK-RUN exit=N" after the command and "RAMPACK-AGENT done" before it powers off. An image passes when
the command exits 0. QEMU runs under TCG (no KVM): qemu-system-x86_64 for x86_64, qemu-system-aarch64 -M virt
for aarch64. Exits 5 when an image fails.

Examples:
  rampack verify --boot out/manifest.json --recipe recipes/python.yaml
  rampack verify --boot out/ --smoke "go version" --arch aarch64
  rampack verify --boot out/node-22-x86_64.cpio.gz --smoke "node -e 1" --kernel ./vmlinuz --json`,
    )
    .action(runVerify);
}
