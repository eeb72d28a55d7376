/**
 * Runs commands inside a built initramfs under QEMU with the slim tracer
 * (native/guest/tracer.c) as init, and reads what it reports: each
 * command's exit status, and the paths the commands opened ("trace" mode) or
 * failed to find ("missing" mode). The tracer is a helper init
 * (src/boot/probe.ts): compiled for the target arch at first use into the
 * cache, appended with its commands and the workload's files as one more
 * archive to a temporary copy of the initramfs, and started with rdinit=, so
 * the exact built bytes are what boots, with the entry's boot.cmdline.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { appendHelperInit, compileHelperInit, type HelperFile } from '../boot/probe.ts';
import { bootInitramfs } from '../boot/qemu.ts';
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import { INPUT_FILE_LIMITS, readInputFile } from '../util/input-file.ts';
import { unescapeTracePath } from './trace-file.ts';

/** The workload's files go to /.rampack-probe/workload in the guest (docs/recipe.md), while tracing and verifying only. */
const WORKLOAD_DIR = 'workload';
const TRACER_SOURCE = 'tracer.c';

export type TracerMode = 'trace' | 'missing';

/** Commands as the tracer reads them: per command, its argument count, then the arguments, each NUL-terminated. */
export function encodeCommands(commands: readonly (readonly string[])[]): Buffer {
  return Buffer.from(commands.flatMap((command) => [String(command.length), ...command]).map((part) => `${part}\0`).join(''), 'utf8');
}

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
  const tracer = await compileHelperInit(TRACER_SOURCE, options.arch, options.cacheDir);
  const workload = options.workloadFiles === undefined ? [] : await directoryFiles(options.workloadFiles);
  const work = await mkdtemp(join(tmpdir(), 'rampack-slim-'));
  try {
    const initrd = join(work, 'initramfs');
    const init = await appendHelperInit(options.initramfs, initrd, tracer, [
      { name: 'commands', data: encodeCommands(options.commands) },
      { name: 'mode', data: Buffer.from(options.mode) },
      ...workload.map((file) => ({ ...file, name: `${WORKLOAD_DIR}/${file.name}` })),
    ]);
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
