/**
 * The root filesystem tree as rampack carries it between stages: the layer
 * flattener produces it, the agent stage adds to it, the cpio writer consumes it.
 *
 * Paths are "byte strings": every char is one byte of the on-disk name (latin1
 * decoding), so names that are not valid UTF-8 survive unchanged, and plain
 * string comparison is bytewise order. Use `displayPath` to show one to a user.
 * A path is relative to the root, with no leading "/" or "./", no trailing "/",
 * no "." or ".." components and no empty components; the root itself is never
 * an entry.
 */

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';

/** A run of data in a sparse file: `size` bytes at `offset` of the file. */
export interface SparseRun {
  readonly offset: number;
  readonly size: number;
}

/** A byte range inside a file on local disk (e.g. an unpacked layer tar). */
export interface FileRange {
  readonly file: string;
  readonly offset: number;
  /** Bytes of the file's contents (holes included). */
  readonly size: number;
  /**
   * A sparse file (GNU tar --sparse): only these runs are stored, back to
   * back from `offset`, in order; every other byte of the contents is zero.
   */
  readonly sparse?: readonly SparseRun[];
}

/** A part of a range's contents: bytes stored at `position` of its file, or zeros. */
export type RangePiece = { position: number; length: number } | { zeros: number };

/** Bytes a range occupies in its file (less than its size when it is sparse). */
export function storedSize(range: FileRange): number {
  return range.sparse === undefined ? range.size : storedStarts(range.sparse).total;
}

/**
 * Bytes [from, to) of a range's contents as stored bytes and zeros, in order,
 * without ever holding a hole in memory (a sparse file may be mostly holes).
 */
export function* rangePieces(range: FileRange, from: number, to: number): Generator<RangePiece> {
  if (range.sparse === undefined) {
    if (to > from) yield { position: range.offset + from, length: to - from };
    return;
  }
  const runs = range.sparse;
  const { starts } = storedStarts(runs);
  let at = from;
  for (let index = firstRunEndingAfter(runs, from); index < runs.length && at < to; index++) {
    const run = runs[index]!;
    if (at < run.offset) {
      const zeros = Math.min(run.offset, to) - at;
      yield { zeros };
      at += zeros;
    }
    const end = Math.min(run.offset + run.size, to);
    if (at < end) {
      yield { position: range.offset + starts[index]! + (at - run.offset), length: end - at };
      at = end;
    }
  }
  if (at < to) yield { zeros: to - at };
}

/** Where each run starts among the stored bytes, computed once per map. */
const storedStartsOf = new WeakMap<readonly SparseRun[], { starts: Float64Array; total: number }>();

function storedStarts(runs: readonly SparseRun[]): { starts: Float64Array; total: number } {
  let known = storedStartsOf.get(runs);
  if (known === undefined) {
    const starts = new Float64Array(runs.length);
    let total = 0;
    runs.forEach((run, index) => {
      starts[index] = total;
      total += run.size;
    });
    storedStartsOf.set(runs, (known = { starts, total }));
  }
  return known;
}

/** Index of the first run (sorted, not overlapping) that ends after `offset`: a binary search. */
function firstRunEndingAfter(runs: readonly SparseRun[], offset: number): number {
  let low = 0;
  let high = runs.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    const run = runs[middle]!;
    if (run.offset + run.size <= offset) low = middle + 1;
    else high = middle;
  }
  return low;
}

export interface TreeEntry {
  readonly path: string;
  readonly type: EntryType;
  /** Permission bits including setuid, setgid and sticky (mask 0o7777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Seconds since the epoch. */
  readonly mtime: number;
  /** Contents of a regular file: bytes in memory or a range of a file on disk. */
  readonly data?: Buffer | FileRange;
  /** Target of a symlink (byte string). */
  readonly linkTarget?: string;
  /** Device numbers of char and block devices. */
  readonly devMajor?: number;
  readonly devMinor?: number;
  /**
   * Entries that share an inode key are hard links of one another: the cpio
   * writer gives them one inode number and carries the data once.
   */
  readonly inode?: number;
  /** Extended attributes (name -> raw value); newc cannot carry them. */
  readonly xattrs?: Readonly<Record<string, Buffer>>;
}

/** Size in bytes of an entry's contents (0 for everything but files). */
export function dataSize(entry: TreeEntry): number {
  if (entry.type !== 'file' || entry.data === undefined) return 0;
  return Buffer.isBuffer(entry.data) ? entry.data.length : entry.data.size;
}

/** A byte-string path rendered for humans (UTF-8 where it decodes). */
export function displayPath(path: string): string {
  return Buffer.from(path, 'latin1').toString('utf8');
}

/** A JS (UTF-16) string turned into a byte-string path. */
export function bytePath(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

/** Parent path of a tree path ("" for top-level entries). */
export function parentPath(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

/** Char code of "/", the lowest byte in walk order. */
export const SLASH_CODE = 0x2f;

/**
 * Walk order: a directory, then its whole subtree, then its next sibling;
 * names compare bytewise. That is bytewise order with "/" below every other
 * byte, so "a/b" < "a-c" (plain order puts "a-c" first). It is the order of
 * layer tars written by `tar --sort=name` and Go's directory walks, which lets
 * the build predict the archive from partly unpacked layers (pipeline/speculate.ts).
 */
export function compareTreePaths(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return (x === SLASH_CODE ? 0 : x) - (y === SLASH_CODE ? 0 : y);
  }
  return a.length - b.length;
}

/** How many of the entries, sorted in compareTreePaths order, come before `path`. */
export function sortedIndexOf(entries: readonly { readonly path: string }[], path: string): number {
  let low = 0;
  let high = entries.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (compareTreePaths(entries[middle]!.path, path) < 0) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Entries in compareTreePaths order; faster than sorting with it, as "/" is made the lowest char once per path. */
export function sortByTreePath<T extends { readonly path: string }>(entries: Iterable<T>): T[] {
  const keyed = Array.from(entries, (entry) => ({ key: entry.path.replaceAll('/', '\0'), entry }));
  keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return keyed.map(({ entry }) => entry);
}
