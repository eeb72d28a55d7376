/**
 * Boots a kernel + initramfs under QEMU (TCG emulation, no KVM) with the
 * serial console on stdout, and collects what the guest prints until it
 * powers off. Used by `npm run demo` and `rampack verify --boot`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { InputError, UsageError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';

export interface BootOptions {
  arch: Arch;
  /** Kernel image (vmlinuz / Image). */
  kernel: string;
  /** The initramfs file, as a VMM would load it. */
  initrd: string;
  /** Arguments for /init, passed after "--" on the kernel command line. */
  agentArgs?: string[];
  /** Kernel parameters before rampack's own (an entry's boot.cmdline, rdinit=...). */
  kernelParameters?: readonly string[];
  memoryMiB?: number;
  timeoutMs?: number;
  /** Called with console output as it arrives (e.g. to stream it to a terminal). */
  onOutput?: (chunk: string) => void;
}

export interface BootResult {
  /** Everything the console printed, line ends normalized to "\n". */
  output: string;
  /** QEMU's own diagnostics (bad options, unreadable files). */
  stderr: string;
  /** QEMU's exit code; null when it was killed. A guest power-off exits 0. */
  exitCode: number | null;
  timedOut: boolean;
  durationMs: number;
}

interface Machine {
  command: string;
  debianPackage: string;
  args: string[];
  console: string;
}

const MACHINES: Record<Arch, Machine> = {
  x86_64: { command: 'qemu-system-x86_64', debianPackage: 'qemu-system-x86', args: [], console: 'ttyS0' },
  aarch64: { command: 'qemu-system-aarch64', debianPackage: 'qemu-system-arm', args: ['-M', 'virt', '-cpu', 'max'], console: 'ttyAMA0' },
};

/** The kernel passes at most 31 arguments to init (CONFIG_INIT_ENV_ARG_LIMIT=32, argv[0] included) and panics beyond. */
const MAX_INIT_ARGS = 31;
/** COMMAND_LINE_SIZE on x86_64 and arm64. */
const MAX_COMMAND_LINE = 2048;

/** The QEMU system emulator for `arch`. */
export function qemuCommand(arch: Arch): string {
  return MACHINES[arch].command;
}

/** Throws an InputError naming the Debian package when the emulator for `arch` is missing. */
export function checkQemu(arch: Arch): void {
  const { command, debianPackage } = MACHINES[arch];
  const probe = spawnSync(command, ['--version'], { stdio: 'ignore' });
  if (probe.error !== undefined || probe.status !== 0) {
    throw new InputError(`${command} is not installed, it is needed to boot ${arch} images`, {
      hint: `install it with: apt-get install ${debianPackage}`,
    });
  }
}

/**
 * The kernel command line: `parameters` (e.g. the manifest entry's
 * boot.cmdline), the console, then init's arguments after "--". Spaces
 * separate parameters and quoting is not reliable after "--", so an argument
 * with a space cannot reach init intact.
 */
export function kernelCommandLine(arch: Arch, agentArgs: readonly string[], parameters: readonly string[] = []): string {
  if (agentArgs.length > MAX_INIT_ARGS) {
    throw new UsageError(`too many agent arguments (${agentArgs.length}): the kernel passes at most ${MAX_INIT_ARGS} to init`);
  }
  for (const arg of agentArgs) {
    if (arg === '' || /[\s"\x00-\x1f\x7f]/.test(arg)) {
      throw new UsageError(`agent argument ${JSON.stringify(arg)} cannot pass through the kernel command line`, {
        hint: 'arguments must be non-empty and free of spaces, quotes and control characters',
      });
    }
  }
  const parts = [...parameters, `console=${MACHINES[arch].console}`, 'panic=-1', 'quiet'];
  if (agentArgs.length > 0) parts.push('--', ...agentArgs);
  const commandLine = parts.join(' ');
  if (commandLine.length >= MAX_COMMAND_LINE) {
    throw new UsageError(`the kernel command line would be ${commandLine.length} bytes, the kernel takes at most ${MAX_COMMAND_LINE - 1}`);
  }
  return commandLine;
}

export function qemuArguments(options: BootOptions): string[] {
  const machine = MACHINES[options.arch];
  return [
    ...machine.args,
    '-accel', 'tcg', // KVM is not always usable (nested, CI); TCG always is
    '-smp', '1',
    '-m', String(options.memoryMiB ?? 512),
    '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio',
    '-no-reboot', // with panic=-1 a guest panic ends QEMU instead of rebooting forever
    '-kernel', options.kernel,
    '-initrd', options.initrd,
    '-append', kernelCommandLine(options.arch, options.agentArgs ?? [], options.kernelParameters),
  ];
}

async function checkReadable(path: string, what: string): Promise<void> {
  try {
    await access(path, constants.R_OK);
  } catch (error) {
    throw new InputError(`${what} ${path} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

/** Boots the initramfs and resolves when QEMU exits (guest power-off) or the timeout kills it. */
export async function bootInitramfs(options: BootOptions): Promise<BootResult> {
  const args = qemuArguments(options);
  checkQemu(options.arch);
  await checkReadable(options.kernel, 'kernel');
  await checkReadable(options.initrd, 'initramfs');

  const started = performance.now();
  const qemu = spawn(qemuCommand(options.arch), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const stderr: string[] = [];
  qemu.stdout.setEncoding('utf8');
  qemu.stderr.setEncoding('utf8');
  qemu.stdout.on('data', (chunk: string) => {
    output.push(chunk);
    options.onOutput?.(chunk);
  });
  qemu.stderr.on('data', (chunk: string) => stderr.push(chunk));

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    qemu.kill('SIGKILL');
  }, options.timeoutMs ?? 120_000);

  try {
    const exitCode = await new Promise<number | null>((resolve, reject) => {
      qemu.on('error', reject);
      qemu.on('close', (code) => resolve(code));
    });
    return {
      output: output.join('').replace(/\r/g, ''),
      stderr: stderr.join(''),
      exitCode,
      timedOut,
      durationMs: Math.round(performance.now() - started),
    };
  } finally {
    clearTimeout(timer);
  }
}
