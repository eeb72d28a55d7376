import { describe, expect, it } from 'vitest';
import { minimumMemoryMiB, treeFootprint, WORKLOAD_HEADROOM_MIB } from '../../src/boot/memory.ts';
import { BOOT_CMDLINE, bootRequirements } from '../../src/boot/requirements.ts';

const MiB = 1024 * 1024;

describe('the guest-memory rule', () => {
  it('counts file data in whole pages, a page per symlink, and every entry', () => {
    const footprint = treeFootprint([
      { type: 'dir', size: 0 },
      { type: 'file', size: 1 },
      { type: 'file', size: 4096 },
      { type: 'file', size: 4097 },
      { type: 'file', size: 0 },
      { type: 'symlink', size: 7 },
      { type: 'char', size: 0 },
    ]);
    expect(footprint).toEqual({ pageBytes: (1 + 1 + 2 + 0 + 1) * 4096, entries: 7 });
  });

  it('needs the compressed file (while unpacking) or the workload headroom (after boot), whichever is larger, on top of the tree', () => {
    const tree = { pageBytes: 100 * MiB, entries: 1000 };
    const small = minimumMemoryMiB({ arch: 'x86_64', compressedBytes: 1 * MiB, tree });
    // The unpacking workspace (16 MiB) plus a 16 MiB file still fit where the workload will be.
    expect(minimumMemoryMiB({ arch: 'x86_64', compressedBytes: (WORKLOAD_HEADROOM_MIB / 2) * MiB, tree })).toBe(small);
    const big = minimumMemoryMiB({ arch: 'x86_64', compressedBytes: (WORKLOAD_HEADROOM_MIB / 2 + 64) * MiB, tree });
    expect(big - small).toBeGreaterThanOrEqual(64);
    expect(big - small).toBeLessThanOrEqual(64 * 1.1 + 8);
  });

  it('grows with the tree, gives whole multiples of 8 MiB, and is never below what the data itself takes', () => {
    for (const arch of ['x86_64', 'aarch64'] as const) {
      let previous = 0;
      for (const dataMiB of [0, 10, 100, 1000]) {
        const tree = { pageBytes: dataMiB * MiB, entries: dataMiB * 10 };
        const minimum = minimumMemoryMiB({ arch, compressedBytes: (dataMiB / 3) * MiB, tree });
        expect(minimum % 8).toBe(0);
        expect(minimum).toBeGreaterThan(previous);
        expect(minimum).toBeGreaterThan(dataMiB + dataMiB / 3);
        previous = minimum;
      }
    }
  });
});

describe('boot requirements', () => {
  it('ask for ramfs, the codec’s decompressor and the kernel release that has it', () => {
    const tree = { pageBytes: 0, entries: 0 };
    const zstd = bootRequirements({ arch: 'x86_64', compression: 'zstd', compressedBytes: 0, tree });
    expect(zstd).toMatchObject({ cmdline: BOOT_CMDLINE, minKernel: '5.9', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_BINFMT_ELF=y', 'CONFIG_RD_ZSTD=y'] });
    expect(BOOT_CMDLINE).toBe('rootfstype=ramfs cma=0');
    expect(bootRequirements({ arch: 'aarch64', compression: 'gzip', compressedBytes: 0, tree })).toMatchObject({ minKernel: '3.7', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_BINFMT_ELF=y', 'CONFIG_RD_GZIP=y'] });
    expect(bootRequirements({ arch: 'x86_64', compression: 'none', compressedBytes: 0, tree })).toMatchObject({ minKernel: '2.6', kernelConfig: ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_BINFMT_ELF=y'] });
    expect(bootRequirements({ arch: 'aarch64', compression: 'zstd', compressedBytes: 0, tree }).minKernel).toBe('5.9');
  });
});
