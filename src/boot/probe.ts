/**
 * Boot-time helper inits: a small static C program (native/guest/*.c, which
 * share native/guest/guest.h) compiled for the guest's arch at first use into
 * the cache, appended with its plan to a temporary copy of a published
 * initramfs as one more newc archive, and started with `rdinit=` instead of
 * the image's agent. The published bytes boot unchanged (the copy only grows
 * at the end) and the image's /init stays in place to be inspected. The plan
 * (helperPlanFiles) holds the commands and the image's env, working directory
 * and user, read here from its image.json. `verify --boot` runs the probe
 * (native/guest/probe.c) this way, `rampack slim` the tracer
 * (src/slim/tracer.ts).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, copyFile, mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { newcArchive } from '../cpio/writer.ts';
import { paddingFor } from '../cpio/newc.ts';
import { InputError } from '../errors.ts';
import type { InitramfsContents } from '../inspect/initramfs.ts';
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

/** The helper inits' sources (the programs and guest.h, which they share): native/guest/, two levels above this module whether it runs from src/boot/ or dist/boot/. */
const GUEST_SOURCES = join(import.meta.dirname, '..', '..', 'native', 'guest');

/** The compiler flags of a helper init, a static binary (`-o OUTPUT SOURCE` follow). */
const COMPILE_FLAGS = ['-static', '-O2', '-s', '-Wall'];

/**
 * The cache key of helper init `name` built for `arch` from the sources in
 * `sourceDir`: every file of the folder (the program and the header it
 * includes, so an edit to guest.h compiles every helper init anew), the
 * compiler and its flags.
 */
export async function helperInitKey(sourceDir: string, name: string, arch: Arch): Promise<string> {
  const hash = createHash('sha256').update(`${name}\0${COMPILERS[arch].command}\0${COMPILE_FLAGS.join(' ')}\0`);
  for (const file of (await readdir(sourceDir)).sort()) hash.update(`${file}\0`).update(await readFile(join(sourceDir, file))).update('\0');
  return hash.digest('hex').slice(0, 16);
}

/**
 * Compiles a helper init (a file in native/guest/) as a static binary for
 * `arch` into `cacheDir`, once per helperInitKey, and returns its path.
 */
export async function compileHelperInit(name: string, arch: Arch, cacheDir: string): Promise<string> {
  const source = join(GUEST_SOURCES, name);
  if (!(await access(source).then(() => true, () => false))) throw new Error(`the helper init source ${source} is missing`);
  const key = await helperInitKey(GUEST_SOURCES, name, arch);
  const binary = join(cacheDir, 'helper-inits', `${name.replace(/\.c$/, '')}-${key}-${arch}`);
  if (await access(binary).then(() => true, () => false)) return binary;
  const compiler = COMPILERS[arch];
  await writeAtomically(binary, async (temporary) => {
    try {
      await run(compiler.command, [...COMPILE_FLAGS, '-o', temporary, source]);
    } catch (error) {
      const failure = error as NodeJS.ErrnoException & { stderr?: string };
      if (failure.code === 'ENOENT') {
        throw new InputError(`${compiler.command} is not installed: it compiles rampack's helper init ${name} for ${arch} guests`, {
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

/** The image's own settings that commands run with in the guest: from its /etc/rampack/image.json. */
export interface ImageSettings {
  env: readonly string[];
  workingDir: string;
  user: string;
}

/** The settings of a rampack-built initramfs, read on the host from the bytes the guest boots: helper inits parse no JSON. */
export function imageSettings(contents: InitramfsContents): ImageSettings {
  const image = contents.imageJson as Partial<ImageSettings> | undefined;
  if (image === undefined) {
    throw new InputError(`${contents.file} has no /etc/rampack/image.json: the commands run with the env, working directory and user it names`, {
      hint: 'boot an initramfs that rampack built',
    });
  }
  return { env: image.env ?? [], workingDir: image.workingDir || '/', user: image.user ?? '' };
}

/** What every helper init reads from /.rampack-probe/ (native/guest/guest.h): the commands, and the image's settings they run with. */
export interface HelperPlan extends ImageSettings {
  commands: readonly (readonly string[])[];
}

/** Commands as the helper inits read them: per command, its argument count, then the arguments, each NUL-terminated. */
export function encodeCommands(commands: readonly (readonly string[])[]): Buffer {
  return nulList(commands.flatMap((command) => [String(command.length), ...command]));
}

/** NUL-terminated strings, the form of the plan files. */
function nulList(items: readonly string[]): Buffer {
  return Buffer.from(items.map((item) => `${item}\0`).join(''), 'utf8');
}

/**
 * The plan files of a helper init: those every helper init reads, then
 * `own` ones (file name → value) that the program alone reads.
 */
export function helperPlanFiles(plan: HelperPlan, own: Readonly<Record<string, string>>): HelperFile[] {
  const withNul = [...plan.commands.flat(), ...plan.env, plan.workingDir, plan.user, ...Object.values(own)].find((text) => text.includes('\0'));
  if (withNul !== undefined) throw new InputError(`a helper init's plan cannot carry a NUL byte: ${JSON.stringify(withNul)}`);
  return [
    { name: 'commands', data: encodeCommands(plan.commands) },
    { name: 'env', data: nulList(plan.env) },
    { name: 'cwd', data: nulList([plan.workingDir]) },
    { name: 'user', data: nulList([plan.user]) },
    ...Object.entries(own).map(([name, value]) => ({ name, data: nulList([value]) })),
  ];
}

/** What the probe does in the guest (see native/guest/probe.c). */
export interface ProbePlan extends HelperPlan {
  arch: Arch;
  /** The smoke command first, then any others (a slim variant's workload), run until one fails. */
  commands: readonly (readonly string[])[];
  /** Files the commands use, below /.rampack-probe/ (e.g. "workload/service.py"). */
  files: readonly HelperFile[];
  /** MiB a child process must be able to fill once the image is up. */
  headroomMiB: number;
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
  const planFiles = helperPlanFiles(plan, { headroom: String(plan.headroomMiB) });
  const probe = await compileHelperInit(PROBE_SOURCE, plan.arch, cacheDir);
  const directory = await mkdtemp(join(tmpdir(), 'rampack-probe-'));
  const remove = () => rm(directory, { recursive: true, force: true });
  try {
    const file = join(directory, 'initramfs');
    const init = await appendHelperInit(initrd, file, probe, [...planFiles, ...plan.files]);
    return { file, rdinit: `rdinit=${init}`, remove };
  } catch (error) {
    await remove();
    throw error;
  }
}
