/**
 * The slim tree: the image's files a workload was traced opening, the
 * recipe's slim.keep globs, and what those need to work — their parent
 * directories, every symlink on their paths and the symlinks' targets
 * (resolved inside the image root), every symlink that resolves to something
 * kept, whole hard-link groups, device nodes, the mount points (/proc, /sys,
 * /dev, /tmp, /run, empty), the dynamic loader's configuration, and for every
 * kept program its ELF interpreter, shared libraries and script interpreter,
 * to a fixed point. Everything else is dropped. It runs after `drop` and
 * before `files` (src/pipeline/tree-options.ts), so it composes with both.
 */
import type { Arch } from '../oci/content.ts';
import { parentPath, type TreeEntry } from '../tree/entry.ts';
import { globToRegExp, treeDifference, type DropResult } from '../tree/transforms.ts';
import { defaultLibraryDirs, ldConfDirectories, programNeeds, readEntryBytes } from './elf-deps.ts';

/** Symlinks followed while resolving one path before it counts as a loop (the kernel's limit). */
const MAX_SYMLINK_HOPS = 40;

/** Kept in every slim tree: mount points, and files read before anything is traced (loader config, users). */
const ALWAYS_KEPT = ['proc', 'sys', 'dev', 'tmp', 'run', 'etc/ld.so.cache', 'etc/ld.so.conf', 'etc/passwd', 'etc/group', 'etc/nsswitch.conf', 'etc/hosts'];
const ALWAYS_KEPT_GLOBS = ['etc/ld.so.conf.d/**'];

export interface SlimOptions {
  /** Traced paths (tree paths); those not in the tree are ignored. */
  trace: readonly string[];
  /** Globs of paths kept whole; a leading "!" excludes matches of the earlier globs. */
  keep: readonly string[];
  arch: Arch;
}

/** Whether a path is kept by the globs: matched by one, or inside a matched directory, and not excluded by a "!" glob. */
function keepMatcher(patterns: readonly string[]): (path: string, inKeptDirectory: boolean) => boolean {
  const include = patterns.filter((p) => !p.startsWith('!')).map(globToRegExp);
  const exclude = patterns.filter((p) => p.startsWith('!')).map((p) => globToRegExp(p.slice(1)));
  return (path, inKeptDirectory) => (inKeptDirectory || include.some((m) => m.test(path))) && !exclude.some((m) => m.test(path));
}

class SlimTree {
  readonly #tree: Map<string, TreeEntry>;
  readonly #byInode = new Map<number, TreeEntry[]>();
  readonly kept = new Set<string>();
  /** Kept regular files whose needs are not looked at yet. */
  readonly #pending: TreeEntry[] = [];

  constructor(entries: readonly TreeEntry[]) {
    this.#tree = new Map(entries.map((entry) => [entry.path, entry]));
    for (const entry of entries) {
      if (entry.inode !== undefined) this.#byInode.set(entry.inode, [...(this.#byInode.get(entry.inode) ?? []), entry]);
    }
  }

  /**
   * The path with every symlink resolved inside the image root ("/.." stays
   * at the root), or undefined when it does not exist or loops; `onSymlink`
   * sees each symlink followed.
   */
  resolve(path: string, onSymlink: (symlink: string) => void = () => {}): string | undefined {
    let rest = path.split('/');
    let current = '';
    for (let hops = 0; rest.length > 0; ) {
      const part = rest.shift()!;
      if (part === '' || part === '.') continue;
      if (part === '..') {
        current = parentPath(current);
        continue;
      }
      const next = current === '' ? part : `${current}/${part}`;
      const entry = this.#tree.get(next);
      if (entry === undefined) return undefined;
      if (entry.type === 'symlink') {
        if (++hops > MAX_SYMLINK_HOPS) return undefined;
        onSymlink(next);
        const target = entry.linkTarget ?? '';
        if (target.startsWith('/')) current = '';
        rest = [...target.split('/'), ...rest];
        continue;
      }
      if (rest.length > 0 && entry.type !== 'dir') return undefined;
      current = next;
    }
    return current === '' ? undefined : current;
  }

  /** Keeps a path: what it resolves to, the symlinks on the way, and their parents. */
  keep(path: string): void {
    const resolved = this.resolve(path, (symlink) => this.#mark(symlink));
    if (resolved !== undefined) this.#mark(resolved);
  }

  /** Marks an existing entry kept (its parents are canonical directories), with its parents and its whole hard-link group. */
  #mark(path: string): void {
    for (let at = path; at !== '' && !this.kept.has(at); at = parentPath(at)) {
      const entry = this.#tree.get(at);
      if (entry === undefined) return;
      this.kept.add(at);
      if (entry.type === 'file') this.#pending.push(entry);
      for (const link of entry.inode === undefined ? [] : (this.#byInode.get(entry.inode) ?? [])) this.#mark(link.path);
    }
  }

  /** Keeps each kept program's interpreters and libraries, until nothing new comes. */
  async closeOverPrograms(arch: Arch, libraryDirs: readonly string[]): Promise<void> {
    while (this.#pending.length > 0) {
      const entry = this.#pending.pop()!;
      const needs = await programNeeds(entry, arch);
      for (const interpreter of needs.interpreters) this.keep(interpreter.replace(/^\/+/, ''));
      const origin = parentPath(entry.path);
      const searchDirs = [...needs.searchPaths.map((dir) => dir.replaceAll('$ORIGIN', `/${origin}`).replaceAll('${ORIGIN}', `/${origin}`)), ...libraryDirs];
      for (const library of needs.libraries) {
        if (library.includes('/')) {
          this.keep(library.replace(/^\/+/, ''));
          continue;
        }
        const path = searchDirs.map((dir) => `${dir.replace(/^\/+|\/+$/g, '')}/${library}`).find((candidate) => this.#tree.get(this.resolve(candidate) ?? '')?.type === 'file');
        if (path !== undefined) this.keep(path);
      }
    }
  }

  /** Keeps every symlink that resolves to something kept (e.g. /lib64/ld-linux-x86-64.so.2, python3 -> python3.11). */
  keepSymlinksToKept(): void {
    // One pass: keeping a symlink adds only symlinks and directories, never a new target.
    for (const [path, entry] of this.#tree) {
      if (entry.type !== 'symlink' || this.kept.has(path)) continue;
      const target = this.resolve(path);
      if (target !== undefined && this.kept.has(target)) this.keep(path);
    }
  }

  /** Directories ld.so searches: ld.so.conf (with its includes) first, then the defaults. */
  async libraryDirs(arch: Arch): Promise<string[]> {
    const dirs: string[] = [];
    const seen = new Set<string>();
    const readConf = async (path: string) => {
      const entry = this.#tree.get(path);
      if (entry?.type !== 'file' || seen.has(path)) return;
      seen.add(path);
      const { dirs: listed, includes } = ldConfDirectories((await readEntryBytes(entry, 0, 1 << 20)).toString('latin1'));
      dirs.push(...listed);
      for (const include of includes) {
        const matcher = globToRegExp(include.startsWith('/') ? include : `etc/${include}`);
        for (const candidate of [...this.paths()].filter((p) => matcher.test(p)).sort()) await readConf(candidate);
      }
    };
    await readConf('etc/ld.so.conf');
    return [...dirs, ...defaultLibraryDirs(arch)];
  }

  paths(): IterableIterator<string> {
    return this.#tree.keys();
  }
}

/** The slim tree of `entries` (sorted, parents first); the result keeps their order. */
export async function slimTree(entries: readonly TreeEntry[], options: SlimOptions): Promise<DropResult> {
  const tree = new SlimTree(entries);
  const kept = keepMatcher([...options.keep, ...ALWAYS_KEPT_GLOBS]);
  for (const path of [...options.trace, ...ALWAYS_KEPT]) tree.keep(path);
  // A kept directory brings its subtree, as in drop.
  const keptDirs = new Set<string>();
  for (const entry of entries) {
    if (kept(entry.path, keptDirs.has(parentPath(entry.path)))) {
      if (entry.type === 'dir') keptDirs.add(entry.path);
      tree.keep(entry.path);
    }
    if (entry.type === 'char' || entry.type === 'block' || entry.type === 'fifo') tree.keep(entry.path);
  }
  await tree.closeOverPrograms(options.arch, await tree.libraryDirs(options.arch));
  tree.keepSymlinksToKept();
  return treeDifference(entries, entries.filter((entry) => tree.kept.has(entry.path)));
}
