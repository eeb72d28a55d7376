/**
 * Debian's stock kernel, for booting initramfs images under QEMU. Debian
 * builds every initramfs codec in (gzip, zstd, xz, lz4...), so it can boot
 * whatever rampack writes. The package is fetched once with apt-get and the
 * vmlinuz kept in the cache's kernels/<arch>/ folder; every use touches it,
 * so `rampack cache prune --older-than` keeps a kernel in use.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Cache } from '../cache/cache.ts';
import { InputError } from '../errors.ts';
import { OCI_ARCH, type Arch } from '../oci/content.ts';
import { writeAtomically } from '../util/atomic.ts';

const run = promisify(execFile);

const PASS_A_KERNEL = 'pass the path of a kernel image (vmlinuz) for this architecture instead';

/** Returns a vmlinuz for `arch`, downloading Debian's kernel package into `cache` the first time. */
export async function ensureDebianKernel(arch: Arch, cache: Cache): Promise<string> {
  const archDir = cache.kernelDir(arch);
  const cached = await findCachedKernel(archDir);
  if (cached !== undefined) {
    // A use like any other: its last use is what `cache prune` goes by.
    await cache.touch(cached);
    return cached;
  }

  const debianArch = OCI_ARCH[arch];
  if (debianArch !== (await hostDebianArch())) await addForeignArch(debianArch);
  const pkg = await kernelPackageName(debianArch);
  return downloadKernel(pkg, debianArch, archDir);
}

async function findCachedKernel(archDir: string): Promise<string | undefined> {
  const names = await readdir(archDir).catch(() => [] as string[]);
  const kernels = names.filter((name) => name.startsWith('vmlinuz-')).sort();
  return kernels.length === 0 ? undefined : join(archDir, kernels[kernels.length - 1]!);
}

async function apt(command: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  try {
    const { stdout } = await run(command, args, {
      cwd: options.cwd,
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stderr?: string };
    if (failure.code === 'ENOENT') {
      throw new InputError(`cannot fetch Debian's kernel: ${command} is not installed (this needs a Debian-based system)`, {
        hint: PASS_A_KERNEL,
        cause: error,
      });
    }
    const detail = (failure.stderr ?? failure.message).trim().split('\n').slice(-3).join(' / ');
    throw new InputError(`cannot fetch Debian's kernel: ${command} ${args.join(' ')} failed: ${detail}`, {
      hint: `check apt's sources and network access (running as root), or ${PASS_A_KERNEL}`,
      cause: error,
    });
  }
}

async function hostDebianArch(): Promise<string> {
  return (await apt('dpkg', ['--print-architecture'])).trim();
}

async function addForeignArch(debianArch: string): Promise<void> {
  const foreign = (await apt('dpkg', ['--print-foreign-architectures'])).split('\n');
  if (foreign.includes(debianArch)) return;
  await apt('dpkg', ['--add-architecture', debianArch]);
  await apt('apt-get', ['update', '-qq']);
}

/** The versioned package (e.g. linux-image-6.1.0-56-amd64) that linux-image-<arch> depends on. */
async function kernelPackageName(debianArch: string): Promise<string> {
  const meta = `linux-image-${debianArch}:${debianArch}`;
  const depends = await apt('apt-cache', ['depends', meta]).catch(async () => {
    // apt-cache knows nothing yet (fresh container): fetch the package lists once.
    await apt('apt-get', ['update', '-qq']);
    return apt('apt-cache', ['depends', meta]);
  });
  const match = /Depends:\s*(linux-image-[0-9][^\s:]*)/.exec(depends);
  if (match === null) {
    throw new InputError(`cannot fetch Debian's kernel: ${meta} depends on no versioned linux-image package`, {
      hint: PASS_A_KERNEL,
    });
  }
  return match[1]!;
}

async function downloadKernel(pkg: string, debianArch: string, archDir: string): Promise<string> {
  await mkdir(archDir, { recursive: true });
  const work = await mkdtemp(join(archDir, '.download-'));
  try {
    await apt('apt-get', ['download', '-qq', `${pkg}:${debianArch}`], { cwd: work });
    const debs = (await readdir(work)).filter((name) => name.endsWith('.deb'));
    if (debs.length !== 1) throw new InputError(`apt-get download ${pkg} produced no single .deb in ${work}`);
    const tree = join(work, 'tree');
    await apt('dpkg', ['-x', join(work, debs[0]!), tree]);
    const vmlinuz = (await readdir(join(tree, 'boot'))).find((name) => name.startsWith('vmlinuz-'));
    if (vmlinuz === undefined) throw new InputError(`Debian package ${pkg} holds no boot/vmlinuz-*`, { hint: PASS_A_KERNEL });
    const kernel = join(archDir, vmlinuz);
    await writeAtomically(kernel, (temporary) => copyFile(join(tree, 'boot', vmlinuz), temporary));
    return kernel;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
