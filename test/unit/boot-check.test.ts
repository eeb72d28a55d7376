import { describe, expect, it } from 'vitest';
import { bootFailure } from '../../src/boot/check.ts';
import type { BootRequirements } from '../../src/manifest/manifest.ts';

const boot: BootRequirements = { cmdline: 'rootfstype=ramfs cma=0', minMemoryMiB: 344, minKernel: '5.9', kernelConfig: [] };
const SMOKE = [['lang-hello']];
const PROBE_OK = [
  'RAMPACK-PROBE start uptime=4.10',
  'RAMPACK-PROBE agent ok machine=x86_64 size=1000 mode=0755',
  'RAMPACK-PROBE run-begin 0',
  'hello',
  'RAMPACK-PROBE run 0 exit=0',
  'RAMPACK-PROBE workload mib=32 exit=0',
  'RAMPACK-PROBE done',
].join('\n');

/** The console read as a probe that ran `commands`, with `memoryMiB` of RAM, that did (or did not) time out after 1 s. */
function failureOf(screen: string, { commands = SMOKE, memoryMiB = 344, timedOut = false } = {}) {
  return bootFailure(screen, { timedOut, timeoutMs: timedOut ? 5000 : 1000, memoryMiB, boot, commands });
}

describe('reading a boot from its console', () => {
  it('passes only a probe that ran everything', () => {
    expect(failureOf(PROBE_OK)).toBeUndefined();
    expect(failureOf(PROBE_OK.replace('RAMPACK-PROBE done', ''))?.kind).toBe('timeout');
  });

  it('reports unpack failures and memory exhaustion with the memory given and published, whatever QEMU exited with', () => {
    const unpack = '[    2.1] Initramfs unpacking failed: write error\n[    2.2] Kernel panic - not syncing: VFS: Unable to mount root fs';
    expect(failureOf(unpack, { memoryMiB: 240 })).toEqual({
      kind: 'unpack',
      message: 'the kernel could not unpack the initramfs (Initramfs unpacking failed: write error); the VM had 240 MiB, the entry publishes boot.minMemoryMiB 344',
    });
    const deadlocked = 'Kernel panic - not syncing: System is deadlocked on memory';
    expect(failureOf(deadlocked, { memoryMiB: 240 })?.kind).toBe('out-of-memory');
    expect(failureOf('Kernel panic - not syncing: No working init found.')).toEqual({
      kind: 'panic',
      message: 'kernel panic: No working init found. (the VM had 344 MiB, the entry publishes boot.minMemoryMiB 344)',
    });
  });

  it('tells the agent check, the smoke command and the workload apart', () => {
    expect(failureOf('RAMPACK-PROBE start uptime=1\nRAMPACK-PROBE fail: /init is not executable (mode 0644)')).toEqual({
      kind: 'agent',
      message: '/init is not executable (mode 0644)',
    });
    expect(failureOf(PROBE_OK.replace('run 0 exit=0', 'run 0 exit=2'))).toEqual({ kind: 'smoke', message: 'the smoke command exited 2', command: ['lang-hello'] });
    const killed = PROBE_OK.replace('workload mib=32 exit=0', 'workload mib=32 exit=137').replace('hello', 'Out of memory: Killed process 80 (init)');
    expect(failureOf(killed)?.kind).toBe('out-of-memory');
    expect(failureOf(PROBE_OK.replace('workload mib=32 exit=0', 'workload mib=32 exit=1'))?.kind).toBe('workload');
    expect(failureOf('Linux version 6.1', { timedOut: true })).toEqual({ kind: 'timeout', message: 'nothing started within 5.0s; console ends: Linux version 6.1' });
  });

  it('names the workload command that failed, did not finish, or could not start', () => {
    const commands = [['python3', '--version'], ['python3', 'service.py'], ['python3', 'client.py']];
    const secondFails = PROBE_OK.replace('RAMPACK-PROBE run 0 exit=0', 'RAMPACK-PROBE run 0 exit=0\nRAMPACK-PROBE run-begin 1\nTraceback\n\nRAMPACK-PROBE run 1 exit=1');
    expect(failureOf(secondFails, { commands })).toEqual({ kind: 'workload-command', message: 'the workload command `python3 service.py` exited 1', command: ['python3', 'service.py'] });
    // Every command must have run: a probe that stopped after the smoke command did not pass.
    expect(failureOf(PROBE_OK, { commands })).toEqual({ kind: 'workload-command', message: 'the workload command `python3 service.py` did not report an exit status', command: ['python3', 'service.py'] });
    const hangs = 'RAMPACK-PROBE start uptime=1\nRAMPACK-PROBE agent ok machine=x86_64\nRAMPACK-PROBE run-begin 0\nRAMPACK-PROBE run 0 exit=0\nRAMPACK-PROBE run-begin 1\nserving';
    expect(failureOf(hangs, { commands, timedOut: true })).toEqual({ kind: 'timeout', message: 'the workload command `python3 service.py` did not finish within 5.0s', command: ['python3', 'service.py'] });
    const cannotStart = `${hangs.replace('serving', 'RAMPACK-PROBE fail: cannot run python3: No such file or directory (PATH=/bin)')}\nRAMPACK-PROBE run 1 exit=127`;
    expect(failureOf(cannotStart, { commands })).toEqual({ kind: 'workload-command', message: 'cannot run python3: No such file or directory (PATH=/bin)', command: ['python3', 'service.py'] });
  });
});
