/**
 * The smallest guest RAM an image boots in, with boot.cmdline
 * (`rootfstype=ramfs cma=0`: no cap on the rootfs, no memory set aside for
 * contiguous DMA), from what the build knows. Two moments need the most:
 *   - the end of unpacking: the kernel, the decompressor's workspace, the
 *     compressed file (where the VMM loaded it, freed only when the last byte
 *     is unpacked) and the whole tree;
 *   - after boot: the kernel, the tree, and a small workload (the agent, a
 *     command), in the memory the compressed file gave back.
 * The tree is every file's data in whole pages (ramfs keeps page cache pages
 * and cannot evict or swap them; a symlink's target takes a page) plus an
 * inode and a dentry per entry. The constants were calibrated by booting
 * generated images of different shapes on both arches near their limit with
 * `rampack verify --boot --find-min-memory` (docs/runtime.md has the table).
 */
import type { Arch } from '../oci/content.ts';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;

/**
 * What the kernel keeps for itself with one vCPU (its image, page tables,
 * slabs, per-CPU areas, the page allocator's reserves): measured as the
 * smallest memory a near-empty image runs the workload in, less the workload.
 */
const KERNEL_BASELINE_MIB: Record<Arch, number> = { x86_64: 72, aarch64: 48 };
/** Measured on top of the baseline at the end of unpacking: the zstd or gzip workspace and unpacking buffers. */
const UNPACK_WORKSPACE_MIB = 16;
/** Slab memory per entry (ramfs inode, dentry, page cache bookkeeping), measured with 30,000 small files. */
const ENTRY_BYTES = 1024;
/** Memory a small workload gets after boot: the probe fills this much in a child process. */
export const WORKLOAD_HEADROOM_MIB = 32;
/** struct page (64 bytes) per 4 KiB page of RAM: 1/64 of the guest's memory is never available. */
const MEMMAP_FRACTION = 1 / 64;
/** Margin for boot-to-boot variation (measured minimums moved by up to one 8 MiB step) and kernel updates: 5%, at least 8 MiB. */
const SAFETY_FACTOR = 1.05;
const SAFETY_MIN_MIB = 8;
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

/** Pages of RAM one entry's data takes: a regular file's data or a symlink's target, rounded up. */
export function entryPageBytes(type: string, size: number): number {
  if (type === 'symlink') return PAGE_BYTES;
  return type === 'file' ? Math.ceil(size / PAGE_BYTES) * PAGE_BYTES : 0;
}

export function treeFootprint(entries: Iterable<FootprintEntry>): TreeFootprint {
  let pageBytes = 0;
  let count = 0;
  for (const entry of entries) {
    count += 1;
    pageBytes += entryPageBytes(entry.type, entry.size);
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
  const treeMiB = (tree.pageBytes + tree.entries * ENTRY_BYTES) / MiB;
  const unpackingMiB = UNPACK_WORKSPACE_MIB + compressedBytes / MiB;
  const usableMiB = KERNEL_BASELINE_MIB[arch] + treeMiB + Math.max(unpackingMiB, WORKLOAD_HEADROOM_MIB);
  const neededMiB = usableMiB / (1 - MEMMAP_FRACTION);
  const totalMiB = Math.max(neededMiB * SAFETY_FACTOR, neededMiB + SAFETY_MIN_MIB);
  return Math.ceil(totalMiB / ROUNDING_MIB) * ROUNDING_MIB;
}
