/**
 * Makes sure the Debian tools a test needs are installed. Tests install what
 * is missing through apt (we are root on developer machines and CI) and fail,
 * never skip, when that is impossible.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface Tool {
  /** Command that must be on PATH afterwards (or else a file that must exist). */
  command?: string;
  file?: string;
  /** Debian package that provides it. */
  pkg: string;
}

export const TOOLS = {
  registry: { command: 'docker-registry', pkg: 'docker-registry' },
  htpasswd: { command: 'htpasswd', pkg: 'apache2-utils' },
  skopeo: { command: 'skopeo', pkg: 'skopeo' },
  umoci: { command: 'umoci', pkg: 'umoci' },
  cpio: { command: 'cpio', pkg: 'cpio' },
  bsdtar: { command: 'bsdtar', pkg: 'libarchive-tools' },
  zstd: { command: 'zstd', pkg: 'zstd' },
  gzip: { command: 'gzip', pkg: 'gzip' },
  musl: { command: 'musl-gcc', pkg: 'musl-tools' },
  qemuX86: { command: 'qemu-system-x86_64', pkg: 'qemu-system-x86' },
  qemuArm: { command: 'qemu-system-aarch64', pkg: 'qemu-system-arm' },
  aarch64Gcc: { command: 'aarch64-linux-gnu-gcc', pkg: 'gcc-aarch64-linux-gnu' },
  gnuTime: { file: '/usr/bin/time', pkg: 'time' },
  zsh: { command: 'zsh', pkg: 'zsh' },
  fish: { command: 'fish', pkg: 'fish' },
  // --no-install-recommends leaves the cross compiler without libc headers.
  aarch64Libc: { file: '/usr/aarch64-linux-gnu/include/stdio.h', pkg: 'libc6-dev-arm64-cross' },
  // What scripts/build-native.ts needs for the native addons.
  gcc: { command: 'cc', pkg: 'gcc' },
  libdeflate: { file: '/usr/include/libdeflate.h', pkg: 'libdeflate-dev' },
  isal: { file: '/usr/include/isa-l/igzip_lib.h', pkg: 'libisal-dev' },
} as const satisfies Record<string, Tool>;

export function hasCommand(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

function hasTool(tool: Tool): boolean {
  return tool.file ? existsSync(tool.file) : hasCommand(tool.command!);
}

/**
 * apt runs synchronously, which blocks the test worker's event loop so that no
 * vitest timeout can fire: the command must end by itself (a stalled mirror or
 * a dpkg lock held by another run would otherwise hang the file for ever).
 */
export const APT_OPTIONS = { timeout: 600_000, killSignal: 'SIGKILL' } as const;
/** Waits (bounded) for another apt/dpkg run holding the lock instead of failing at once. */
const LOCK_WAIT = ['-o', 'DPkg::Lock::Timeout=300'];

let aptUpdated = false;

/** Installs the packages of the missing tools; throws when any stays missing. */
export function ensureTools(...tools: Tool[]): void {
  const missing = tools.filter((tool) => !hasTool(tool));
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((tool) => tool.pkg))];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    if (!aptUpdated) {
      execFileSync('apt-get', ['update', '-qq', ...LOCK_WAIT], { stdio: 'inherit', env, ...APT_OPTIONS });
      aptUpdated = true;
    }
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...LOCK_WAIT, ...packages], { stdio: 'inherit', env, ...APT_OPTIONS });
  } catch (error) {
    throw new Error(`could not install ${packages.join(', ')} with apt-get: ${(error as Error).message}`);
  }
  const still = missing.filter((tool) => !hasTool(tool));
  if (still.length > 0) {
    throw new Error(`still missing after apt-get install: ${still.map((tool) => tool.command ?? tool.file).join(', ')}`);
  }
}
