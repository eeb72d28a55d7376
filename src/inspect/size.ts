/**
 * Where the bytes of a tree are: totals per directory, the largest files, and
 * whether an image fits a memory budget.
 */
import { InputError } from '../errors.ts';
import { formatBytes } from '../util/log.ts';

/** A regular file's data: `path` is relative to the root, without a leading "/". */
export interface SizedFile {
  path: string;
  size: number;
}

export interface DirectorySize {
  /** Absolute path, e.g. "/usr/lib"; "/" holds the files directly in the root. */
  path: string;
  bytes: number;
  files: number;
}

/**
 * Inclusive totals for every directory up to `depth` levels deep (1: top-level
 * directories only), largest first. Files directly in the root count for "/".
 */
export function sizeByDirectory(files: Iterable<SizedFile>, depth: number): DirectorySize[] {
  const totals = new Map<string, DirectorySize>();
  const add = (path: string, bytes: number) => {
    const total = totals.get(path) ?? { path, bytes: 0, files: 0 };
    total.bytes += bytes;
    total.files += 1;
    totals.set(path, total);
  };
  for (const file of files) {
    // Each level's directory is a prefix of the path, ending before a slash.
    let slash = file.path.indexOf('/');
    if (slash < 0) add('/', file.size);
    for (let level = 1; level <= depth && slash >= 0; level++, slash = file.path.indexOf('/', slash + 1)) {
      add(`/${file.path.slice(0, slash)}`, file.size);
    }
  }
  return [...totals.values()].sort((a, b) => b.bytes - a.bytes || (a.path < b.path ? -1 : 1));
}

export function largestFiles(files: Iterable<SizedFile>, count: number): SizedFile[] {
  return [...files].sort((a, b) => b.size - a.size || (a.path < b.path ? -1 : 1)).slice(0, count);
}

const SIZE_UNITS: Record<string, number> = { B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30 };

/** "512MiB" -> 536870912; `what` names the setting in the error. */
export function parseByteSize(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)$/.exec(text.trim());
  if (match === null) {
    throw new InputError(`${what}: "${text}" is not a size`, { hint: 'write a number and a unit: B, KiB, MiB or GiB, e.g. 512MiB' });
  }
  return Math.round(Number(match[1]) * SIZE_UNITS[match[2]!]!);
}

export interface BudgetCheck {
  label: string;
  budgetBytes: number;
  /** The image's boot.minMemoryMiB (src/boot/memory.ts). */
  minMemoryMiB: number;
  compressedBytes: number;
  uncompressedBytes: number;
  directories: DirectorySize[];
}

/** A warning when the image needs more guest RAM than the VM's memory budget, naming where to slim. */
export function memoryBudgetWarning(check: BudgetCheck): string | undefined {
  const needed = check.minMemoryMiB * SIZE_UNITS.MiB!;
  if (needed <= check.budgetBytes) return undefined;
  const largest = check.directories.map((dir) => `${dir.path} ${formatBytes(dir.bytes)}`).join(', ');
  return (
    `${check.label}: booting needs ${formatBytes(needed)} of RAM (boot.minMemoryMiB; ${formatBytes(check.compressedBytes)} compressed, ` +
    `${formatBytes(check.uncompressedBytes)} unpacked), over the memory budget of ${formatBytes(check.budgetBytes)}; ` +
    `largest directories: ${largest}`
  );
}
