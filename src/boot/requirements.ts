/**
 * The boot contract of a manifest entry (`boot`): the kernel parameters the
 * runtime must pass, the smallest guest RAM, and the kernel it needs.
 * docs/runtime.md explains each; docs/decisions.md says why ramfs.
 */
import type { Compression } from '../compress/index.ts';
import type { Arch } from '../oci/content.ts';
import type { BootRequirements } from '../manifest/manifest.ts';
import { minimumMemoryMiB, type TreeFootprint } from './memory.ts';

/**
 * rootfstype=ramfs: without it the kernel unpacks into a tmpfs capped at half
 * the guest's RAM, so an image would need twice its size in RAM; ramfs has no
 * cap. cma=0: Debian's arm64 kernel sets 64 MiB aside for contiguous DMA
 * (CONFIG_CMA_SIZE_MBYTES), which ramfs pages cannot use and a virtio guest
 * does not need.
 */
export const BOOT_CMDLINE = 'rootfstype=ramfs cma=0';

/** Kernel options every image needs: an initramfs, and 64-bit ELF binaries (the agent). */
const BASE_KERNEL_CONFIG = ['CONFIG_BLK_DEV_INITRD=y', 'CONFIG_BINFMT_ELF=y'];

/** The kernel's decompressor for the file, and the first kernel release that has it (gzip: every one). */
const CODEC_SUPPORT: Record<Compression, { config?: string; minKernel?: string }> = {
  gzip: { config: 'CONFIG_RD_GZIP=y' },
  zstd: { config: 'CONFIG_RD_ZSTD=y', minKernel: '5.9' },
  none: {},
};

/** The first release with the arch (arm64 came in 3.7); newc initramfs and rootfstype=ramfs are older. */
const ARCH_MIN_KERNEL: Record<Arch, string> = { x86_64: '2.6', aarch64: '3.7' };

function newerRelease(a: string, b: string | undefined): string {
  if (b === undefined) return a;
  const [aMajor, aMinor] = a.split('.').map(Number) as [number, number];
  const [bMajor, bMinor] = b.split('.').map(Number) as [number, number];
  return aMajor > bMajor || (aMajor === bMajor && aMinor >= bMinor) ? a : b;
}

export interface BootInputs {
  arch: Arch;
  compression: Compression;
  compressedBytes: number;
  tree: TreeFootprint;
}

export function bootRequirements({ arch, compression, compressedBytes, tree }: BootInputs): BootRequirements {
  const codec = CODEC_SUPPORT[compression];
  return {
    cmdline: BOOT_CMDLINE,
    minMemoryMiB: minimumMemoryMiB({ arch, compressedBytes, tree }),
    minKernel: newerRelease(ARCH_MIN_KERNEL[arch], codec.minKernel),
    kernelConfig: codec.config === undefined ? BASE_KERNEL_CONFIG : [...BASE_KERNEL_CONFIG, codec.config],
  };
}
