/**
 * Runs commands inside a built initramfs under QEMU with the slim tracer
 * (src/slim/tracer.c) as init, and reads what it reports: each command's exit
 * status, and the paths the commands opened ("trace" mode) or failed to find
 * ("missing" mode). The tracer is compiled for the target arch at first use
 * into the cache and appended, with the commands and the workload's files, as
 * one more newc archive to a temporary copy of the initramfs: a later
 * archive's /init replaces the agent, so the exact built bytes are what boots.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, appendFile, copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { bootInitramfs } from '../boot/qemu.ts';
import { newcArchive } from '../cpio/writer.ts';
import { InputError } from '../errors.ts';
import type { Arch } from '../image/source.ts';
import { bytePath, sortByTreePath, type TreeEntry } from '../tree/entry.ts';
import { writeAtomically } from '../util/atomic.ts';
import { unescapeTracePath } from './trace-file.ts';

const run = promisify(execFile);

/** Where the workload's files are in the booted image, while tracing and verifying only. */
export const WORKLOAD_DIR = '/rampack/workload';

const COMPILERS: Record<Arch, { command: string; packages: string }> = {
  x86_64: { command: 'musl-gcc', packages: 'musl-tools' },
  aarch64: { command: 'aarch64-linux-gnu-gcc', packages: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' },
};

/** The C source: next to this module in a checkout, under src/ when running from dist/ (package.json ships it). */
async function tracerSource(): Promise<string> {
  const candidates = [new URL('./tracer.c', import.meta.url), new URL('../../src/slim/tracer.c', import.meta.url)].map((url) => fileURLToPath(url));
  for (const candidate of candidates) if (await access(candidate).then(() => true, () => false)) return candidate;
  throw new Error(`the slim tracer's source is missing (looked at ${candidates.join(', ')})`);
}

/** The tracer compiled (static) for `arch`, cached under the source's sha256 so an edit rebuilds it. */
export async function buildTracer(arch: Arch, cacheDir: string): Promise<string> {
  const source = await tracerSource();
  const key = createHash('sha256').update(await readFile(source)).digest('hex').slice(0, 16);
  const binary = join(cacheDir, 'slim-tracer', `${key}-${arch}`, 'tracer');
  if (await access(binary).then(() => true, () => false)) return binary;
  const compiler = COMPILERS[arch];
  await writeAtomically(binary, async (temporary) => {
    try {
      await run(compiler.command, ['-static', '-O2', '-s', '-Wall', '-Werror', '-o', temporary, source]);
    } catch (error) {
      const failure = error as NodeJS.ErrnoException & { stderr?: string };
      throw new InputError(
        failure.code === 'ENOENT' ? `${compiler.command} is not installed; the slim tracer is compiled for ${arch} with it` : `${compiler.command} cannot compile ${source}: ${failure.stderr ?? failure.message}`,
        { hint: `apt-get install ${compiler.packages}`, cause: error },
      );
    }
  });
  return binary;
}

export type TracerMode = 'trace' | 'missing';

/** Commands as the tracer reads them: per command, its argument count, then the arguments, each NUL-terminated. */
export function encodeCommands(commands: readonly (readonly string[])[]): Buffer {
  return Buffer.from(commands.flatMap((command) => [String(command.length), ...command]).map((part) => `${part}\0`).join(''), 'utf8');
}

/** The files of a local directory as tree entries below `into` (a tree path). */
async function directoryEntries(directory: string, into: string, mtime: number): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  const walk = async (dir: string) => {
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      const info = await stat(path);
      const treePath = `${into}/${bytePath(relative(directory, path))}`;
      const owner = { mode: info.mode & 0o7777, uid: 0, gid: 0, mtime };
      if (info.isDirectory()) {
        entries.push({ path: treePath, type: 'dir', ...owner });
        await walk(path);
      } else if (info.isFile()) entries.push({ path: treePath, type: 'file', ...owner, data: await readFile(path) });
    }
  };
  await walk(directory).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the workload files ${directory}: ${error.code ?? error.message}`, { hint: 'slim.files names a directory relative to the recipe' });
  });
  return entries;
}

/** The archive appended to the initramfs: the tracer as /init, its commands and mode, the workload's files. */
async function tracerArchive(tracer: string, commands: readonly (readonly string[])[], mode: TracerMode, workloadFiles?: string): Promise<TreeEntry[]> {
  const owner = { uid: 0, gid: 0, mtime: 0 };
  const entries: TreeEntry[] = [
    { path: 'init', type: 'file', mode: 0o755, ...owner, data: await readFile(tracer) },
    { path: 'rampack', type: 'dir', mode: 0o755, ...owner },
    { path: 'rampack/commands', type: 'file', mode: 0o644, ...owner, data: encodeCommands(commands) },
    { path: 'rampack/mode', type: 'file', mode: 0o644, ...owner, data: Buffer.from(mode) },
  ];
  if (workloadFiles !== undefined) {
    const into = WORKLOAD_DIR.slice(1);
    entries.push({ path: into, type: 'dir', mode: 0o755, ...owner }, ...(await directoryEntries(workloadFiles, into, 0)));
  }
  return sortByTreePath(entries);
}

/**
 * A copy of `initramfs` with `entries` appended as one more uncompressed
 * archive, 4-byte aligned after the compressed part (docs: kernel-initramfs).
 */
async function appendArchive(initramfs: string, entries: readonly TreeEntry[], output: string): Promise<void> {
  await copyFile(initramfs, output);
  const size = (await stat(output)).size;
  const chunks: Buffer[] = [Buffer.alloc((4 - (size % 4)) % 4)];
  for await (const chunk of newcArchive(entries)) chunks.push(chunk as Buffer);
  await appendFile(output, Buffer.concat(chunks));
}

/** sha256 over the commands and the workload's files: a trace records the workload it ran. */
export async function workloadDigest(commands: readonly (readonly string[])[], workloadFiles?: string): Promise<string> {
  const hash = createHash('sha256').update(encodeCommands(commands));
  const files = workloadFiles === undefined ? [] : sortByTreePath(await directoryEntries(workloadFiles, '', 0));
  for (const entry of files) hash.update(`\0${entry.path}\0${entry.mode}\0`).update(Buffer.isBuffer(entry.data) ? entry.data : Buffer.alloc(0));
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
  const tracer = await buildTracer(options.arch, options.cacheDir);
  await mkdir(options.cacheDir, { recursive: true });
  const work = await mkdtemp(join(options.cacheDir, '.slim-boot-'));
  try {
    const initrd = join(work, 'initrd');
    await appendArchive(options.initramfs, await tracerArchive(tracer, options.commands, options.mode, options.workloadFiles), initrd);
    const boot = await bootInitramfs({ arch: options.arch, kernel: options.kernel, initrd, memoryMiB: options.memoryMiB, timeoutMs: options.timeoutMs, onOutput: options.onOutput });
    return parseTracerOutput(boot.output, options.mode, boot.timedOut);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
