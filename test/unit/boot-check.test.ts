import { describe, expect, it } from 'vitest';
import { bootFailure } from '../../src/boot/check.ts';
import type { BootRequirements } from '../../src/manifest/manifest.ts';

const boot: BootRequirements = { cmdline: 'rootfstype=ramfs cma=0', minMemoryMiB: 344, minKernel: '5.9', kernelConfig: [] };
const PROBE_OK = [
  'RAMPACK-PROBE start uptime=4.10',
  'RAMPACK-PROBE agent ok machine=x86_64 size=1000 mode=0755',
  'RAMPACK-PROBE run-begin',
  'hello',
  'RAMPACK-PROBE run exit=0',
  'RAMPACK-PROBE workload mib=32 exit=0',
  'RAMPACK-PROBE done',
].join('\n');

describe('reading a boot from its console', () => {
  it('passes only a probe that ran everything', () => {
    expect(bootFailure(PROBE_OK, false, 1000, 344, boot)).toBeUndefined();
    expect(bootFailure(PROBE_OK.replace('RAMPACK-PROBE done', ''), false, 1000, 344, boot)?.kind).toBe('timeout');
  });

  it('reports unpack failures and memory exhaustion with the memory given and published, whatever QEMU exited with', () => {
    const unpack = '[    2.1] Initramfs unpacking failed: write error\n[    2.2] Kernel panic - not syncing: VFS: Unable to mount root fs';
    expect(bootFailure(unpack, false, 1000, 240, boot)).toEqual({
      kind: 'unpack',
      message: 'the kernel could not unpack the initramfs (Initramfs unpacking failed: write error); the VM had 240 MiB, the entry publishes boot.minMemoryMiB 344',
    });
    const deadlocked = 'Kernel panic - not syncing: System is deadlocked on memory';
    expect(bootFailure(deadlocked, false, 1000, 240, boot)?.kind).toBe('out-of-memory');
    expect(bootFailure('Kernel panic - not syncing: No working init found.', false, 1000, 344, boot)).toEqual({
      kind: 'panic',
      message: 'kernel panic: No working init found. (the VM had 344 MiB, the entry publishes boot.minMemoryMiB 344)',
    });
  });

  it('tells the agent check, the smoke command and the workload apart', () => {
    expect(bootFailure('RAMPACK-PROBE start uptime=1\nRAMPACK-PROBE fail: /init is not executable (mode 0644)', false, 1000, 344, boot)).toEqual({
      kind: 'agent',
      message: '/init is not executable (mode 0644)',
    });
    expect(bootFailure(PROBE_OK.replace('run exit=0', 'run exit=2'), false, 1000, 344, boot)).toEqual({ kind: 'smoke', message: 'the smoke command exited 2' });
    const killed = PROBE_OK.replace('workload mib=32 exit=0', 'workload mib=32 exit=137').replace('hello', 'Out of memory: Killed process 80 (init)');
    expect(bootFailure(killed, false, 1000, 344, boot)?.kind).toBe('out-of-memory');
    expect(bootFailure(PROBE_OK.replace('workload mib=32 exit=0', 'workload mib=32 exit=1'), false, 1000, 344, boot)?.kind).toBe('workload');
    expect(bootFailure('Linux version 6.1', true, 5000, 344, boot)).toEqual({ kind: 'timeout', message: 'nothing started within 5.0s; console ends: Linux version 6.1' });
  });
});
