/**
 * Runs rampack's CLI from source as a separate process, as a user would.
 *
 * Every run has a deadline: a CLI that hangs (or a VM it boots that never
 * powers off) is killed with its whole process group, QEMU included, and the
 * result says so. Nothing a test starts can outlive it and keep a worker (or
 * the machine's two cores) busy: groups still running when the test process
 * exits are killed too.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/** Below the e2e hook timeout (300 s): the run is killed before the hook gives up on it. */
export const CLI_DEADLINE_MS = 280_000;

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The run passed its deadline and was killed (code is then null). */
  timedOut: boolean;
}

export interface CliOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string;
  /** Kill the run (and everything it started) after this long. */
  deadlineMs?: number;
}

/** Process groups of runs still going, killed if this process exits first. */
const running = new Set<number>();
process.once('exit', () => running.forEach(killGroup));

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export function runRampack(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: options.cwd ?? REPO_ROOT,
      env: { ...process.env, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      // Its own process group, so the deadline kills what it started (QEMU) along with it.
      detached: true,
    });
    const pid = child.pid!;
    running.add(pid);
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      killGroup(pid);
    }, options.deadlineMs ?? CLI_DEADLINE_MS);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const settle = () => {
      clearTimeout(deadline);
      running.delete(pid);
    };
    child.on('error', (error) => {
      settle();
      reject(error);
    });
    // Whatever the run left behind holding its pipes dies with it, so 'close' always comes.
    child.on('exit', () => killGroup(pid));
    child.on('close', (code) => {
      settle();
      resolve({ code, stdout, stderr: timedOut ? `${stderr}\n(runRampack: killed after its deadline)` : stderr, timedOut });
    });
    // A CLI that refuses its arguments may exit before it reads its input: that is no error of the test's.
    child.stdin.on('error', (error: NodeJS.ErrnoException) => error.code === 'EPIPE' || reject(error));
    child.stdin.end(options.input ?? '');
  });
}
