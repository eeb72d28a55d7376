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

/** A byte range inside a file on local disk (e.g. an unpacked layer tar). */
export interface FileRange {
  readonly file: string;
  readonly offset: number;
  readonly size: number;
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
 * the build predict the archive from partly unpacked layers (build/speculate.ts).
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

/** Entries in compareTreePaths order; faster than sorting with it, as "/" is made the lowest char once per path. */
export function sortByTreePath<T extends { readonly path: string }>(entries: Iterable<T>): T[] {
  const keyed = Array.from(entries, (entry) => ({ key: entry.path.replaceAll('/', '\0'), entry }));
  keyed.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return keyed.map(({ entry }) => entry);
}
