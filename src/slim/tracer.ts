/**
 * Runs commands inside a built initramfs under QEMU with the slim tracer
 * (native/guest/tracer.c) as init, and reads what it reports: each
 * command's exit status, and the paths the commands opened ("trace" mode) or
 * failed to find ("missing" mode). The tracer is a helper init
 * (src/boot/probe.ts): compiled for the target arch at first use into the
 * cache, appended with its plan (the commands, the image's env, working
 * directory and user from its image.json, the mode) and the workload's files
 * as one more archive to a temporary copy of the initramfs, and started with
 * rdinit=, so the exact built bytes are what boots, with the entry's
 * boot.cmdline.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { appendHelperInit, compileHelperInit, encodeCommands, helperPlanFiles, imageSettings, type HelperFile } from '../boot/probe.ts';
import { bootInitramfs } from '../boot/qemu.ts';
import { InputError } from '../errors.ts';
import { AGENT_PATH, IMAGE_JSON_PATH, readInitramfs } from '../inspect/initramfs.ts';
import type { BootRequirements } from '../manifest/manifest.ts';
import type { Arch } from '../oci/content.ts';
import { bytePath } from '../tree/entry.ts';
import { INPUT_FILE_LIMITS, readInputFile } from '../util/input-file.ts';
import { unescapeTracePath } from './trace-file.ts';

/** The workload's files go to /.rampack-probe/workload in the guest (docs/recipe.md), while tracing and verifying only. */
const WORKLOAD_DIR = 'workload';
const TRACER_SOURCE = 'tracer.c';

/** Guest memory the workload may use on top of what the image needs to boot (a Go build takes a few hundred MiB). */
export const WORKLOAD_HEADROOM_MIB = 768;
/** How long a VM running the workload may take by default (a Go build under TCG takes minutes). */
export const WORKLOAD_TIMEOUT_SECONDS = 1800;

/** Memory for booting an image and running the workload in it (tracing, the slim proof, verify --boot): its published minimum plus the workload's headroom. */
export function workloadMemoryMiB(image: { boot: Pick<BootRequirements, 'minMemoryMiB'> }): number {
  return image.boot.minMemoryMiB + WORKLOAD_HEADROOM_MIB;
}

/** The commands and files of a recipe's slim workload. */
export interface Workload {
  /** Commands run after the smoke command. */
  workload: readonly (readonly string[])[];
  /** Local directory the guest sees at /.rampack-probe/workload. */
  workloadFiles?: string;
}

export type TracerMode = 'trace' | 'missing';

/** The files of a local directory (recursively), named by their path below it. */
async function directoryFiles(directory: string): Promise<HelperFile[]> {
  const files: HelperFile[] = [];
  // An explicit stack, not recursion: the directory's depth is the user's.
  const pending = [directory];
  const walk = async () => {
    for (let dir = pending.pop(); dir !== undefined; dir = pending.pop()) {
      for (const name of (await readdir(dir)).sort().reverse()) {
        const path = join(dir, name);
        const info = await stat(path);
        if (info.isDirectory()) pending.push(path);
        else if (info.isFile()) files.push({ name: relative(directory, path), data: await readInputFile(path, 'workload file', INPUT_FILE_LIMITS.extraFile), mode: info.mode & 0o777 });
      }
    }
  };
  await walk().catch((error: NodeJS.ErrnoException) => {
    if (error instanceof InputError) throw error;
    throw new InputError(`cannot read the workload files ${directory}: ${error.code ?? error.message}`, { hint: 'slim.files names a directory relative to the recipe' });
  });
  return files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The workload's files as helper files: at /.rampack-probe/workload in the guest. */
export async function workloadHelperFiles(workloadFiles: string | undefined): Promise<HelperFile[]> {
  const files = workloadFiles === undefined ? [] : await directoryFiles(workloadFiles);
  return files.map((file) => ({ ...file, name: `${WORKLOAD_DIR}/${file.name}` }));
}

/** The tree paths of an initramfs that came from the image (not rampack's /init and /etc/rampack), without the leading "/". */
export async function imagePaths(file: string): Promise<Set<string>> {
  const contents = await readInitramfs(file);
  const added = (path: string) => path === AGENT_PATH || path.startsWith(`${IMAGE_JSON_PATH.slice(0, IMAGE_JSON_PATH.lastIndexOf('/'))}/`);
  return new Set(contents.entries.filter((entry) => entry.path !== '/' && !added(entry.path)).map((entry) => bytePath(entry.path.slice(1))));
}

/** Of the paths a "missing" run did not find, those the full image has: what the slim image lacks. */
export function missingFromSlim(run: TracerRun, fullImagePaths: ReadonlySet<string>): string[] {
  return run.paths.filter((path) => fullImagePaths.has(path.slice(1)));
}

/** sha256 over the commands and the workload's files: a trace records the workload it ran. */
export async function workloadDigest(commands: readonly (readonly string[])[], workloadFiles?: string): Promise<string> {
  const hash = createHash('sha256').update(encodeCommands(commands));
  for (const file of workloadFiles === undefined ? [] : await directoryFiles(workloadFiles)) hash.update(`\0${file.name}\0${file.mode}\0`).update(file.data);
  return `sha256:${hash.digest('hex')}`;
}

export interface TracerRun {
  /** Exit status per command, in order; shorter than the commands when the tracer stopped early. */
  exits: number[];
  /** Absolute byte-string paths ("/usr/bin/x"), sorted. */
  paths: string[];
  /** The tracer's own error, if it had one. */
  error?: string;
  /** Everything the console printed. */
  output: string;
  timedOut: boolean;
}

export interface TracerOptions {
  arch: Arch;
  kernel: string;
  initramfs: string;
  /** Kernel parameters the image boots with (its manifest entry's boot.cmdline). */
  cmdline: string;
  commands: readonly (readonly string[])[];
  workloadFiles?: string;
  mode: TracerMode;
  cacheDir: string;
  memoryMiB: number;
  timeoutMs: number;
  onOutput?: (chunk: string) => void;
}

function block(output: string, name: string): string[] | undefined {
  const begin = output.indexOf(`\nRAMPACK-SLIM-${name}-BEGIN\n`);
  const end = output.indexOf(`\nRAMPACK-SLIM-${name}-END\n`, begin + 1);
  if (begin < 0 || end < 0) return undefined;
  return output.slice(begin + `\nRAMPACK-SLIM-${name}-BEGIN\n`.length, end + 1).split('\n').filter(Boolean);
}

/** Parses the tracer's console output. */
export function parseTracerOutput(output: string, mode: TracerMode, timedOut: boolean): TracerRun {
  const exits = [...output.matchAll(/^RAMPACK-SLIM-RUN (\d+) exit=(\d+)$/gm)].map((match) => Number(match[2]));
  const error = /^RAMPACK-SLIM error: (.*)$/m.exec(output)?.[1];
  const lines = block(`\n${output}`, mode === 'trace' ? 'TRACE' : 'MISSING');
  return { exits, paths: (lines ?? []).map(unescapeTracePath).sort(), ...(error === undefined ? {} : { error }), output, timedOut };
}

/** Boots the initramfs with the tracer as init and runs the commands. */
export async function runTracer(options: TracerOptions): Promise<TracerRun> {
  const settings = imageSettings(await readInitramfs(options.initramfs));
  const plan = helperPlanFiles({ commands: options.commands, ...settings }, { mode: options.mode });
  const tracer = await compileHelperInit(TRACER_SOURCE, options.arch, options.cacheDir);
  const workload = await workloadHelperFiles(options.workloadFiles);
  const work = await mkdtemp(join(tmpdir(), 'rampack-slim-'));
  try {
    const initrd = join(work, 'initramfs');
    const init = await appendHelperInit(options.initramfs, initrd, tracer, [...plan, ...workload]);
    const boot = await bootInitramfs({
      arch: options.arch,
      kernel: options.kernel,
      initrd,
      kernelParameters: [...options.cmdline.split(' ').filter(Boolean), `rdinit=${init}`],
      memoryMiB: options.memoryMiB,
      timeoutMs: options.timeoutMs,
      onOutput: options.onOutput,
    });
    return parseTracerOutput(boot.output, options.mode, boot.timedOut);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
