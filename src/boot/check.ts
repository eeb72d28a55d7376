/**
 * The boot check behind `rampack verify --boot`: boots the exact initramfs
 * file a manifest entry names, with the entry's boot.cmdline and (unless told
 * otherwise) exactly its boot.minMemoryMiB, whatever agent is inside. The
 * probe (probe.ts, native/guest/probe.c) starts instead of the agent, checks
 * the agent, runs the smoke command (then any workload commands, until one
 * fails) with the image's env, working directory and user, fills the
 * workload headroom, and reports on the console; this module reads the
 * console, since QEMU exits 0 after a guest panic too.
 */
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import { AGENT_PATH, readInitramfs, type InitramfsContents } from '../inspect/initramfs.ts';
import type { BootRequirements, ManifestImage } from '../manifest/manifest.ts';
import { formatDuration } from '../util/log.ts';
import { treeFootprint, WORKLOAD_HEADROOM_MIB } from './memory.ts';
import { imageSettings, probedInitramfs, type HelperFile, type ProbedInitramfs } from './probe.ts';
import { bootInitramfs } from './qemu.ts';
import { bootRequirements } from './requirements.ts';

/** One initramfs to boot, with the contract it must meet. */
export interface BootTarget {
  label: string;
  file: string;
  arch: Arch;
  language?: string;
  /** From the manifest entry; for a file on its own, computed from its contents with the same rule. */
  boot?: BootRequirements;
  /** The agent the manifest entry names: /init must have this sha256. */
  agentSha256?: string;
  /** "slim" for a slim variant (from its manifest entry or its image.json). */
  variant?: ManifestImage['variant'];
  /** A slim variant's full image, when the manifest has its entry: what the slim one was cut from. */
  fullFile?: string;
}

/** Commands run after the smoke command (a slim variant's workload), with their files and the memory they need. */
export interface ProbeWorkload {
  commands: readonly (readonly string[])[];
  /** Below /.rampack-probe/ in the guest. */
  files: readonly HelperFile[];
  /** Guest memory on top of boot.minMemoryMiB while they run. */
  headroomMiB: number;
}

/** How long a VM may take when not told (--timeout). */
export const DEFAULT_BOOT_TIMEOUT_SECONDS = 300;

export interface BootCheckOptions {
  kernel: string;
  smoke: readonly string[];
  workload?: ProbeWorkload;
  /** Guest RAM; default the entry's boot.minMemoryMiB (plus the workload's headroom). */
  memoryMiB?: number;
  cacheDir: string;
  /** Default DEFAULT_BOOT_TIMEOUT_SECONDS. */
  timeoutMs?: number;
  /** Console output as it arrives. */
  onConsole?: (chunk: string) => void;
}

export type BootFailureKind = 'unpack' | 'out-of-memory' | 'panic' | 'agent' | 'smoke' | 'workload-command' | 'workload' | 'timeout' | 'no-probe';

export interface BootFailure {
  kind: BootFailureKind;
  message: string;
  /** The command that failed (kinds smoke and workload-command, or a command that timed out). */
  command?: string[];
  /** On a slim variant: the paths the failed command looked up that the full image has and the slim one lacks. */
  missing?: string[];
}

/** One command the probe ran: the smoke command first, then the workload's. */
export interface CommandRun {
  command: string[];
  /** null when it did not finish. */
  exit: number | null;
  /** What it printed. */
  output: string;
}

export interface BootCheck {
  label: string;
  file: string;
  arch: Arch;
  kernel: string;
  smoke: string[];
  /** The guest RAM it booted with, and what the entry publishes. */
  memoryMiB: number;
  minMemoryMiB: number;
  /** The whole kernel command line's leading part: the entry's boot.cmdline. */
  cmdline: string;
  passed: boolean;
  failure?: BootFailure;
  /** From starting QEMU until the probe (standing in for the agent) ran; null when it never did. */
  initStartedMs: number | null;
  /** The guest's uptime when the probe started. */
  guestUptimeSeconds: number | null;
  /** What the guest's /proc/meminfo said when the probe started. */
  guestMemory: { totalKiB: number; availableKiB: number } | null;
  /** The guest's /proc/mounts line for the root ("rootfs / rootfs rw 0 0" on ramfs; tmpfs adds size=). */
  guestRootfs: string | null;
  smokeExit: number | null;
  /** What the smoke command printed. */
  smokeOutput: string;
  /** Every command that started, in order (the smoke command first); the probe stops at the first that fails. */
  runs: CommandRun[];
  durationMs: number;
}

const PROBE_START = /^RAMPACK-PROBE start uptime=([\d.]+|-)$/m;
const PROBE_MEMORY = /^RAMPACK-PROBE memory total_kib=(\d+) available_kib=(\d+)$/m;
const PROBE_ROOTFS = /^RAMPACK-PROBE rootfs (.*)$/m;
const PROBE_FAIL = /^RAMPACK-PROBE fail: (.*)$/m;
const AGENT_OK = /^RAMPACK-PROBE agent ok /m;
const WORKLOAD = /^RAMPACK-PROBE workload mib=(\d+) exit=(\d+)$/m;
const DONE = /^RAMPACK-PROBE done$/m;
const UNPACK_FAILED = /Initramfs unpacking failed: ([^\n]*)/;
const OUT_OF_MEMORY = /System is deadlocked on memory|Out of memory[^\n]*|oom-kill[^\n]*/;
const PANIC = /Kernel panic - not syncing: ([^\n]*)/;

/** The boot contract the build would publish for this file (same rule): for files given without a manifest. */
export function requirementsOf(contents: InitramfsContents, arch: Arch): BootRequirements {
  const stored = contents.entries.map((entry) => ({ type: entry.type, size: entry.hardLinkOf === undefined ? entry.size : 0 }));
  return bootRequirements({
    arch,
    compression: contents.compression.at(-1) ?? 'none',
    compressedBytes: contents.size,
    tree: treeFootprint(stored),
  });
}

/** The agent the manifest names must be the /init inside the published file. */
function checkAgentDigest(target: BootTarget, contents: InitramfsContents): void {
  if (target.agentSha256 === undefined) return;
  const init = contents.entries.find((entry) => entry.path === AGENT_PATH);
  if (init?.sha256 !== target.agentSha256) {
    throw new InputError(`${target.file}: /init has sha256 ${init?.sha256 ?? '(missing)'}, the manifest names agent ${target.agentSha256}`, {
      hint: 'the file or the manifest was changed after the build; rebuild',
    });
  }
}

/** A target's file made ready to boot any number of times: the probe appended, the contract known. */
export interface PreparedTarget {
  target: BootTarget;
  boot: BootRequirements;
  probed: ProbedInitramfs;
}

export async function prepareTarget(target: BootTarget, options: Pick<BootCheckOptions, 'smoke' | 'workload' | 'cacheDir'>): Promise<PreparedTarget> {
  const contents = await readInitramfs(target.file);
  checkAgentDigest(target, contents);
  const boot = target.boot ?? requirementsOf(contents, target.arch);
  const plan = { arch: target.arch, commands: probeCommands(options), files: options.workload?.files ?? [], ...imageSettings(contents), headroomMiB: WORKLOAD_HEADROOM_MIB };
  return { target, boot, probed: await probedInitramfs(target.file, plan, options.cacheDir) };
}

/** The commands the probe runs, in order: the smoke command, then the workload's. */
function probeCommands({ smoke, workload }: Pick<BootCheckOptions, 'smoke' | 'workload'>): string[][] {
  return [[...smoke], ...(workload?.commands ?? []).map((command) => [...command])];
}

/** What each command printed and how it ended: between the probe's "run-begin N" and "run N exit=S" lines. */
function commandRuns(screen: string, commands: readonly string[][]): CommandRun[] {
  const runs: CommandRun[] = [];
  for (const [n, command] of commands.entries()) {
    const begin = new RegExp(`^RAMPACK-PROBE run-begin ${n}$`, 'm').exec(screen);
    if (begin === null) break;
    const rest = screen.slice(begin.index + begin[0].length + 1);
    const end = new RegExp(`^RAMPACK-PROBE run ${n} exit=(\\d+)$`, 'm').exec(rest);
    runs.push({ command, exit: end === null ? null : Number(end[1]), output: (end === null ? rest : rest.slice(0, end.index)).trimEnd() });
  }
  return runs;
}

/** The first command that did not exit 0, as a failure; undefined when all did. */
function commandFailure(runs: readonly CommandRun[], commands: readonly string[][], timedOut: boolean, timeoutMs: number): BootFailure | undefined {
  for (const [n, command] of commands.entries()) {
    const exit = runs[n]?.exit;
    if (exit === 0) continue;
    const kind = n === 0 ? 'smoke' : 'workload-command';
    const name = n === 0 ? 'the smoke command' : `the workload command \`${command.join(' ')}\``;
    if (exit !== undefined && exit !== null) return { kind, message: `${name} exited ${exit}`, command };
    if (timedOut) return { kind: 'timeout', message: `${name} did not finish within ${formatDuration(timeoutMs)}`, command };
    return { kind, message: `${name} did not report an exit status`, command };
  }
  return undefined;
}

/** Why the boot failed, from the console: the kernel's own messages first, as they explain what follows. */
export function bootFailure(
  screen: string,
  { timedOut, timeoutMs, memoryMiB, boot, commands }: { timedOut: boolean; timeoutMs: number; memoryMiB: number; boot: BootRequirements; commands: readonly string[][] },
): BootFailure | undefined {
  const needed = `the VM had ${memoryMiB} MiB, the entry publishes boot.minMemoryMiB ${boot.minMemoryMiB}`;
  const unpack = UNPACK_FAILED.exec(screen)?.[1];
  if (unpack !== undefined) return { kind: 'unpack', message: `the kernel could not unpack the initramfs (Initramfs unpacking failed: ${unpack}); ${needed}` };
  const oom = OUT_OF_MEMORY.exec(screen)?.[0];
  if (oom !== undefined) return { kind: 'out-of-memory', message: `the guest ran out of memory (${oom.trim()}); ${needed}` };
  const runs = commandRuns(screen, commands);
  const probeFailure = PROBE_FAIL.exec(screen)?.[1];
  if (probeFailure !== undefined && !AGENT_OK.test(screen)) return { kind: 'agent', message: probeFailure };
  // After the agent check the probe fails only in a command (it cannot start it, or cannot enter its directory).
  const failedAt = Math.max(runs.length - 1, 0);
  if (probeFailure !== undefined) return { kind: failedAt === 0 ? 'smoke' : 'workload-command', message: probeFailure, command: commands[failedAt] };
  const panic = PANIC.exec(screen)?.[1];
  if (panic !== undefined) return { kind: 'panic', message: `kernel panic: ${panic.trim()} (${needed})` };
  if (!PROBE_START.test(screen)) {
    const tail = screen.trim().split('\n').slice(-3).join(' / ');
    const what = timedOut ? `nothing started within ${formatDuration(timeoutMs)}` : 'the VM stopped before init started';
    return { kind: timedOut ? 'timeout' : 'no-probe', message: `${what}; console ends: ${tail || '(nothing)'}` };
  }
  const failed = commandFailure(runs, commands, timedOut, timeoutMs);
  if (failed !== undefined) return failed;
  const workload = WORKLOAD.exec(screen);
  if (workload === null || workload[2] !== '0') {
    return { kind: 'workload', message: `a ${WORKLOAD_HEADROOM_MIB} MiB workload could not run after boot (exit ${workload?.[2] ?? 'none'}); ${needed}` };
  }
  if (!DONE.test(screen)) return { kind: 'timeout', message: 'the probe did not finish' };
  return undefined;
}

/** Boots a prepared target once with `memoryMiB` (default its boot.minMemoryMiB). */
export async function bootOnce(prepared: PreparedTarget, options: BootCheckOptions): Promise<BootCheck> {
  const { target, boot, probed } = prepared;
  const memoryMiB = options.memoryMiB ?? boot.minMemoryMiB + (options.workload?.headroomMiB ?? 0);
  const timeoutMs = options.timeoutMs ?? DEFAULT_BOOT_TIMEOUT_SECONDS * 1000;
  const started = performance.now();
  let initStartedMs: number | null = null;
  let screen = '';
  const result = await bootInitramfs({
    arch: target.arch,
    kernel: options.kernel,
    initrd: probed.file,
    kernelParameters: [...boot.cmdline.split(' ').filter(Boolean), probed.rdinit],
    memoryMiB,
    timeoutMs,
    onOutput: (chunk) => {
      screen += chunk.replace(/\r/g, '');
      if (initStartedMs === null && PROBE_START.test(screen)) initStartedMs = Math.round(performance.now() - started);
      options.onConsole?.(chunk);
    },
  });
  const commands = probeCommands(options);
  const failure = bootFailure(result.output, { timedOut: result.timedOut, timeoutMs, memoryMiB, boot, commands });
  const runs = commandRuns(result.output, commands);
  const uptime = PROBE_START.exec(result.output)?.[1];
  const memory = PROBE_MEMORY.exec(result.output);
  return {
    label: target.label,
    file: target.file,
    arch: target.arch,
    kernel: options.kernel,
    smoke: [...options.smoke],
    memoryMiB,
    minMemoryMiB: boot.minMemoryMiB,
    cmdline: boot.cmdline,
    passed: failure === undefined,
    ...(failure === undefined ? {} : { failure }),
    initStartedMs,
    guestUptimeSeconds: uptime === undefined || uptime === '-' ? null : Number(uptime),
    guestMemory: memory === null ? null : { totalKiB: Number(memory[1]), availableKiB: Number(memory[2]) },
    guestRootfs: PROBE_ROOTFS.exec(result.output)?.[1] ?? null,
    smokeExit: runs[0]?.exit ?? null,
    smokeOutput: runs[0]?.output ?? '',
    runs,
    durationMs: Math.round(performance.now() - started),
  };
}

/** Boots a target once, as `verify --boot` does. */
export async function checkBoot(target: BootTarget, options: BootCheckOptions): Promise<BootCheck> {
  const prepared = await prepareTarget(target, options);
  try {
    return await bootOnce(prepared, options);
  } finally {
    await prepared.probed.remove();
  }
}

export interface MemorySearch {
  label: string;
  file: string;
  arch: Arch;
  /** The entry's boot.minMemoryMiB. */
  publishedMiB: number;
  /** The smallest memory (to `stepMiB`) that passed; null when even the upper bound failed. */
  measuredMiB: number | null;
  /** The largest memory tried that failed, and how. */
  failedMiB: number | null;
  failure: BootFailure | null;
  stepMiB: number;
  /** Every boot, in order. */
  trials: { memoryMiB: number; passed: boolean; failure?: BootFailureKind; durationMs: number }[];
}

/** Below this no image boots; the search never tries less. */
const SEARCH_FLOOR_MIB = 32;

/**
 * Bisects the guest memory between a bound that fails and one that passes
 * (the published minimum, or `upperMiB`; doubled until one passes) down to
 * `stepMiB`, booting the prepared file each time.
 */
export async function findMinimumMemory(target: BootTarget, options: BootCheckOptions & { stepMiB: number; upperMiB?: number }): Promise<MemorySearch> {
  const prepared = await prepareTarget(target, options);
  const trials: MemorySearch['trials'] = [];
  let failed: { memoryMiB: number; failure: BootFailure } | null = null;
  const attempt = async (memoryMiB: number): Promise<boolean> => {
    const check = await bootOnce(prepared, { ...options, memoryMiB });
    trials.push({ memoryMiB, passed: check.passed, ...(check.failure ? { failure: check.failure.kind } : {}), durationMs: check.durationMs });
    if (check.failure !== undefined && (failed === null || memoryMiB > failed.memoryMiB)) failed = { memoryMiB, failure: check.failure };
    return check.passed;
  };
  try {
    let high = options.upperMiB ?? prepared.boot.minMemoryMiB;
    let low = SEARCH_FLOOR_MIB - options.stepMiB;
    const ceiling = high * 4;
    while (!(await attempt(high))) {
      low = high;
      high *= 2;
      if (high > ceiling) return searchResult(prepared, null, failed, options.stepMiB, trials);
    }
    while (high - low > options.stepMiB) {
      const middle = Math.ceil((low + high) / 2 / options.stepMiB) * options.stepMiB;
      const probe = middle >= high ? high - options.stepMiB : middle;
      if (await attempt(probe)) high = probe;
      else low = probe;
    }
    return searchResult(prepared, high, failed, options.stepMiB, trials);
  } finally {
    await prepared.probed.remove();
  }
}

function searchResult(
  prepared: PreparedTarget,
  measuredMiB: number | null,
  failed: { memoryMiB: number; failure: BootFailure } | null,
  stepMiB: number,
  trials: MemorySearch['trials'],
): MemorySearch {
  const { target, boot } = prepared;
  return {
    label: target.label,
    file: target.file,
    arch: target.arch,
    publishedMiB: boot.minMemoryMiB,
    measuredMiB,
    failedMiB: failed?.memoryMiB ?? null,
    failure: failed?.failure ?? null,
    stepMiB,
    trials,
  };
}
