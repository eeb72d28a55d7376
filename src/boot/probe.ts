/**
 * Boot-time helper inits: a small static C program (native/guest/*.c)
 * compiled for the guest's arch at first use into the cache, appended to a
 * temporary copy of a published initramfs as one more newc archive, and
 * started with `rdinit=` instead of the image's agent. The published bytes
 * boot unchanged (the copy only grows at the end) and the image's /init stays
 * in place to be inspected. `verify --boot` runs the probe (probe/probe.c)
 * this way; other helper inits reuse appendHelperInit.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, copyFile, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { newcArchive } from '../cpio/writer.ts';
import { paddingFor } from '../cpio/newc.ts';
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import type { TreeEntry } from '../tree/entry.ts';
import { writeAtomically } from '../util/atomic.ts';

const run = promisify(execFile);

/** Where helper inits and their files go in the guest: a directory no image uses. */
export const HELPER_DIR = '.rampack-probe';
const PROBE_SOURCE = 'probe.c';

interface Compiler {
  command: string;
  debianPackages: string;
}

const COMPILERS: Record<Arch, Compiler> = {
  x86_64: { command: 'musl-gcc', debianPackages: 'musl-tools' },
  aarch64: { command: 'aarch64-linux-gnu-gcc', debianPackages: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' },
};

/** The C sources are in native/guest/, two levels above this module whether it runs from src/boot/ or dist/boot/. */
async function helperSource(name: string): Promise<string> {
  const source = join(import.meta.dirname, '..', '..', 'native', 'guest', name);
  if (await access(source).then(() => true, () => false)) return source;
  throw new Error(`the helper init source ${source} is missing`);
}

/**
 * Compiles a helper init (a file in native/guest/) as a static binary for
 * `arch` into `cacheDir`, once per source content, and returns its path.
 */
export async function compileHelperInit(name: string, arch: Arch, cacheDir: string): Promise<string> {
  const source = await helperSource(name);
  const key = createHash('sha256').update(await readFile(source)).digest('hex').slice(0, 16);
  const binary = join(cacheDir, 'helper-inits', `${name.replace(/\.c$/, '')}-${key}-${arch}`);
  if (await access(binary).then(() => true, () => false)) return binary;
  const compiler = COMPILERS[arch];
  await writeAtomically(binary, async (temporary) => {
    try {
      await run(compiler.command, ['-static', '-O2', '-s', '-Wall', '-o', temporary, source]);
    } catch (error) {
      const failure = error as NodeJS.ErrnoException & { stderr?: string };
      if (failure.code === 'ENOENT') {
        throw new InputError(`${compiler.command} is not installed: it compiles the boot probe for ${arch} guests`, {
          hint: `install it with: apt-get install ${compiler.debianPackages}`,
        });
      }
      throw new InputError(`${compiler.command} could not compile ${source}: ${(failure.stderr ?? failure.message).trim()}`, {
        hint: `check the ${compiler.debianPackages} installation`,
      });
    }
  });
  return binary;
}

/** A file the helper init finds in /.rampack-probe/ in the guest; `name` may have directories ("workload/src/main.rs"). */
export interface HelperFile {
  name: string;
  data: Buffer;
  mode?: number;
}

/** The directories the files sit in below HELPER_DIR, parents first. */
function helperDirectories(files: readonly HelperFile[]): string[] {
  const directories = new Set<string>();
  for (const file of files) {
    const parts = file.name.split('/').slice(0, -1);
    parts.forEach((_, i) => directories.add(parts.slice(0, i + 1).join('/')));
  }
  return [...directories].sort();
}

/**
 * Writes `initrd` with one more newc archive appended to `output`: the
 * directory /.rampack-probe holding `init` (the helper, 0755) and `files`.
 * The archive starts 4-aligned (the kernel requires it of an uncompressed
 * archive after a compressed one). Returns the path of the helper for rdinit=.
 */
export async function appendHelperInit(initrd: string, output: string, helper: string, files: readonly HelperFile[]): Promise<string> {
  const owner = { uid: 0, gid: 0, mtime: 0 };
  const entries: TreeEntry[] = [
    { path: HELPER_DIR, type: 'dir', mode: 0o700, ...owner },
    { path: `${HELPER_DIR}/init`, type: 'file', mode: 0o755, ...owner, data: await readFile(helper) },
    ...helperDirectories(files).map((dir): TreeEntry => ({ path: `${HELPER_DIR}/${dir}`, type: 'dir', mode: 0o755, ...owner })),
    ...files.map((file): TreeEntry => ({ path: `${HELPER_DIR}/${file.name}`, type: 'file', mode: file.mode ?? 0o644, ...owner, data: file.data })),
  ];
  const archive = Buffer.concat(await newcArchive(entries).toArray());
  await copyFile(initrd, output);
  const handle = await open(output, 'a');
  try {
    const { size } = await handle.stat();
    await handle.write(Buffer.concat([Buffer.alloc(paddingFor(size)), archive]));
  } finally {
    await handle.close();
  }
  return `/${HELPER_DIR}/init`;
}

/** What the probe does in the guest (see native/guest/probe.c). */
export interface ProbePlan {
  arch: Arch;
  /** The smoke command, then any others (a slim variant's workload), run with the image's env, working directory and user until one fails. */
  commands: readonly (readonly string[])[];
  /** Files the commands use, below /.rampack-probe/ (e.g. "workload/service.py"). */
  files: readonly HelperFile[];
  env: readonly string[];
  workingDir: string;
  user: string;
  /** MiB a child process must be able to fill once the image is up. */
  headroomMiB: number;
}

/** Commands as the helper inits read them: per command, its argument count, then the arguments, each NUL-terminated. */
export function encodeCommands(commands: readonly (readonly string[])[]): Buffer {
  return nulList(commands.flatMap((command) => [String(command.length), ...command]));
}

/** NUL-terminated strings, the form the probe reads. */
function nulList(items: readonly string[]): Buffer {
  return Buffer.from(items.map((item) => `${item}\0`).join(''), 'utf8');
}

/** A probed copy of an initramfs, in a temporary directory removed by `remove`. */
export interface ProbedInitramfs {
  file: string;
  /** The kernel parameter that starts the probe. */
  rdinit: string;
  remove: () => Promise<void>;
}

/** Copies `initrd` into a temporary directory with the probe and its plan appended. */
export async function probedInitramfs(initrd: string, plan: ProbePlan, cacheDir: string): Promise<ProbedInitramfs> {
  const probe = await compileHelperInit(PROBE_SOURCE, plan.arch, cacheDir);
  for (const text of [...plan.commands.flat(), ...plan.env, plan.workingDir, plan.user]) {
    if (text.includes('\0')) throw new InputError(`the probe plan cannot carry a NUL byte: ${JSON.stringify(text)}`);
  }
  const directory = await mkdtemp(join(tmpdir(), 'rampack-probe-'));
  const remove = () => rm(directory, { recursive: true, force: true });
  try {
    const file = join(directory, 'initramfs');
    const init = await appendHelperInit(initrd, file, probe, [
      { name: 'commands', data: encodeCommands(plan.commands) },
      { name: 'env', data: nulList(plan.env) },
      { name: 'cwd', data: nulList([plan.workingDir]) },
      { name: 'user', data: nulList([plan.user]) },
      { name: 'headroom', data: nulList([String(plan.headroomMiB)]) },
      ...plan.files,
    ]);
    return { file, rdinit: `rdinit=${init}`, remove };
  } catch (error) {
    await remove();
    throw error;
  }
}
