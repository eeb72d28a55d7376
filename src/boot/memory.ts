/**
 * The smallest guest RAM an image boots in, with boot.cmdline's
 * `rootfstype=ramfs` (no size cap on the rootfs), from what the build knows.
 * At the peak of unpacking the guest holds, besides the kernel itself:
 *   - the compressed file, where the VMM loaded it, until the last byte is
 *     unpacked (then the kernel frees it, before init starts);
 *   - every file's data in whole pages (ramfs keeps page cache pages, and
 *     cannot evict or swap them), a symlink's target in a page of its own;
 *   - an inode and a dentry per entry.
 * After boot the compressed file's memory is free again, and the workload
 * (agent, smoke command, a small program) lives in it or in the headroom.
 * The constants were calibrated by booting generated images of different
 * shapes near their limit with `rampack verify --boot --find-min-memory`
 * (docs/runtime.md has the measurements).
 */
import type { Arch } from '../image/source.ts';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;

/**
 * RAM the kernel takes before it unpacks anything (its image, page tables,
 * per-CPU areas, slabs, and on arm64 the CMA pool, which ramfs pages cannot
 * use), with one vCPU: the smallest memory a near-empty image boots in.
 */
const KERNEL_BASELINE_MIB: Record<Arch, number> = { x86_64: 72, aarch64: 48 };
/** Slab memory per entry: ramfs inode, dentry, and the name when it is longer than the dentry's inline 32 bytes. */
const ENTRY_BYTES = 1024;
/** Memory a small workload gets after boot: the probe fills this much in a child process. */
export const WORKLOAD_HEADROOM_MIB = 32;
/** struct page (64 bytes) per 4 KiB page of RAM: 1/64 of the guest's memory is never available. */
const MEMMAP_FRACTION = 1 / 64;
/** Published minimums are rounded up to this. */
const ROUNDING_MIB = 8;

/** What an image puts in RAM: sizes that decide its minimum memory. */
export interface TreeFootprint {
  /** Data of regular files (each inode once) and symlink targets, each rounded up to whole pages. */
  pageBytes: number;
  /** Entries the kernel creates: files, directories, links, devices. */
  entries: number;
}

/** One entry of a tree, as the build or the initramfs reader sees it. */
export interface FootprintEntry {
  type: string;
  /** Bytes of a file's data (0 for a hard link whose data another entry carries). */
  size: number;
}

export function treeFootprint(entries: Iterable<FootprintEntry>): TreeFootprint {
  let pageBytes = 0;
  let count = 0;
  for (const entry of entries) {
    count += 1;
    if (entry.type === 'symlink') pageBytes += PAGE_BYTES;
    else if (entry.type === 'file') pageBytes += Math.ceil(entry.size / PAGE_BYTES) * PAGE_BYTES;
  }
  return { pageBytes, entries: count };
}

export interface MemoryInputs {
  arch: Arch;
  /** Bytes of the initramfs file the VMM loads. */
  compressedBytes: number;
  tree: TreeFootprint;
}

/** The smallest guest RAM in MiB at which the image unpacks, starts its init and still runs a small workload. */
export function minimumMemoryMiB({ arch, compressedBytes, tree }: MemoryInputs): number {
  const treeBytes = tree.pageBytes + tree.entries * ENTRY_BYTES;
  // The compressed file and the workload never need memory at the same time.
  const transientBytes = Math.max(compressedBytes, WORKLOAD_HEADROOM_MIB * MiB);
  const usableMiB = KERNEL_BASELINE_MIB[arch] + (treeBytes + transientBytes) / MiB;
  const totalMiB = usableMiB / (1 - MEMMAP_FRACTION);
  return Math.ceil(totalMiB / ROUNDING_MIB) * ROUNDING_MIB;
}
