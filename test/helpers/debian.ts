/** Files from Debian packages (busybox for test images), downloaded once per machine. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Cache } from '../../src/cache/cache.ts';
import { APT_OPTIONS } from './system.ts';

export const TEST_CACHE = join(homedir(), '.cache', 'rampack-test');
/** The cache whose kernels/ folder holds the Debian kernels for boot tests (src/boot/kernel.ts fills it); `--cache TEST_CACHE` finds them. */
export const KERNEL_CACHE = new Cache(TEST_CACHE);

/** Debian's name for the machine's own architecture (the same as OCI's for amd64 and arm64). */
const HOST_DEBIAN_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';

/**
 * Downloads and extracts a Debian package, for the machine's architecture or
 * another one (that needs `dpkg --add-architecture`, which ensureDebianKernel
 * does for its arch); returns the extracted root.
 */
export function debianPackageRoot(pkg: string, debianArch = HOST_DEBIAN_ARCH): string {
  const foreign = debianArch !== HOST_DEBIAN_ARCH;
  const root = join(TEST_CACHE, 'debs', foreign ? `${pkg}_${debianArch}` : pkg);
  if (existsSync(root)) return root;
  mkdirSync(join(TEST_CACHE, 'debs'), { recursive: true });
  const work = mkdtempSync(join(TEST_CACHE, 'debs', `.${pkg}-`));
  try {
    const download = () => execFileSync('apt-get', ['download', foreign ? `${pkg}:${debianArch}` : pkg], { cwd: work, stdio: 'pipe', ...APT_OPTIONS });
    try {
      download();
    } catch {
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'pipe', ...APT_OPTIONS });
      download();
    }
    const deb = readdirSync(work).find((name) => name.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    execFileSync('dpkg', ['-x', join(work, deb), join(work, 'root')], APT_OPTIONS);
    try {
      renameSync(join(work, 'root'), root);
    } catch (error) {
      if (!existsSync(root)) throw error; // another process got there first
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return root;
}

/** Debian's statically linked busybox (for an OCI/Debian arch: amd64, arm64): a shell and coreutils for test images. */
export function busyboxBinary(debianArch = HOST_DEBIAN_ARCH): string {
  return join(debianPackageRoot('busybox-static', debianArch), 'bin', 'busybox');
}
