/**
 * Flattens indexed layers into one filesystem tree, following the OCI
 * image-spec changeset rules as containerd, go-containerregistry and umoci
 * apply them. Layers are applied bottom to top; within a layer:
 *
 * - Whiteouts act on the LOWER layers only, so all of a layer's whiteouts are
 *   applied before its other entries (their order in the tar does not matter):
 *   `.wh.NAME` deletes NAME and its subtree; `DIR/.wh..wh..opq` deletes every
 *   child DIR had from lower layers. Whiteouts of missing paths do nothing.
 *   Whiteout files never reach the output; other `.wh..wh.*` names (aufs
 *   metadata such as `.wh..wh.plnk`) and anything below them are skipped.
 * - An entry replaces what is at its path, except that a directory over a
 *   directory only replaces metadata and keeps the children. A replaced
 *   directory loses its subtree.
 * - Parent directories are looked up like a container runtime does: a symlink
 *   among them is followed inside the root (absolute targets start at the
 *   root, ".." stops at the root, at most MAX_SYMLINK_HOPS links), so the
 *   entry lands at the resolved path. Missing parents are created as
 *   directories 0755 root:root with the entry's mtime. A parent that is a
 *   file, device or fifo is an InputError, as in umoci and containerd. The
 *   last path component is never followed: an entry replaces a symlink.
 * - A hard link names an entry of the tree built so far (lower layers or
 *   earlier in the same tar; its parents resolved as above, its last component
 *   not followed) and becomes a copy of it with the same inode key, so later
 *   changes to one path leave the other paths with the old inode. A link to a
 *   missing path or to a directory is an InputError.
 * - Mode keeps setuid, setgid and sticky bits; symlinks get 0777, the mode
 *   Linux always reports for them. uid/gid are numeric; mtime whole seconds.
 */
import { MAX_NAME_SIZE, MAX_U32 } from '../cpio/newc.ts';
import { InputError } from '../errors.ts';
import { displayPath, parentPath, type EntryType, type FileRange, type TreeEntry } from '../tree/entry.ts';
import type { LayerEntry } from '../tar/tar-index.ts';
import type { UnpackedLayer } from './unpack.ts';

export interface DroppedXattr {
  path: string;
  name: string;
  value: Buffer;
}

export interface FlattenResult {
  /** Sorted with compareTreePaths: every parent comes before its children. */
  entries: TreeEntry[];
  warnings: string[];
  /** Every extended attribute of the tree, which newc cpio cannot carry. */
  droppedXattrs: DroppedXattr[];
}

/** The limit Linux-oriented securejoin implementations use for symlink chains. */
const MAX_SYMLINK_HOPS = 255;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_WHITEOUT = '.wh..wh..opq';
const AUFS_METADATA_PREFIX = '.wh..wh.';

/** A tree node: the fields of a TreeEntry but its path, plus children for directories. */
interface Node {
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  data?: FileRange;
  linkTarget?: string;
  devMajor?: number;
  devMinor?: number;
  inode?: number;
  xattrs?: Record<string, Buffer>;
  children?: Map<string, Node>;
}

interface ResolvedDirectory {
  node: Node;
  /** The directory's path after following symlinks. */
  path: string;
}

export function flattenLayers(layers: UnpackedLayer[]): FlattenResult {
  const tree = new TreeBuilder();
  for (const layer of layers) tree.applyLayer(layer);
  return tree.result();
}

class TreeBuilder {
  private readonly root: Node = { type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, children: new Map() };
  private readonly warnings: string[] = [];
  private nextInode = 1;
  /**
   * The directory the last entry went into, and the last entry itself when it
   * is a directory: in tar order the next entry mostly goes into one of them.
   * Rebuilt after every entry, so nothing in it can go stale.
   */
  private recentDirectories: { path: string; directory: ResolvedDirectory }[] = [];

  applyLayer(layer: UnpackedLayer): void {
    const context = new LayerContext(layer);
    this.recentDirectories = [];
    const additions: LayerEntry[] = [];
    for (const entry of layer.entries) {
      const kind = classify(entry.path);
      if (kind === 'whiteout') this.applyWhiteout(entry.path, context);
      else if (kind === 'entry') additions.push(entry);
      else context.skipped++;
    }
    for (const entry of additions) this.add(entry, context);
    for (const warning of [...layer.warnings, ...context.warnings()]) this.warnings.push(warning);
  }

  result(): FlattenResult {
    const entries: TreeEntry[] = [];
    const droppedXattrs: FlattenResult['droppedXattrs'] = [];
    // Children by name, depth first: the walk order of compareTreePaths. An
    // explicit stack, as a layer decides how deep the tree goes.
    const stack: { prefix: string; children: Iterator<[string, Node]> }[] = [{ prefix: '', children: byName(this.root.children!) }];
    while (stack.length > 0) {
      const top = stack.at(-1)!;
      const next = top.children.next();
      if (next.done) {
        stack.pop();
        continue;
      }
      const [name, node] = next.value;
      const path = joinPath(top.prefix, name);
      entries.push(treeEntry(path, node));
      if (node.xattrs !== undefined) for (const [xattr, value] of Object.entries(node.xattrs)) droppedXattrs.push({ path, name: xattr, value });
      if (node.children !== undefined) stack.push({ prefix: path, children: byName(node.children) });
    }
    return { entries, warnings: this.warnings, droppedXattrs };
  }

  private applyWhiteout(path: string, context: LayerContext): void {
    const name = baseName(path);
    const directory = this.resolveDirectory(parentPath(path), context);
    if (directory === undefined) return;
    if (name === OPAQUE_WHITEOUT) directory.node.children!.clear();
    else directory.node.children!.delete(name.slice(WHITEOUT_PREFIX.length));
  }

  private add(entry: LayerEntry, context: LayerContext): void {
    checkOwner(entry, context);
    const node = entry.type === 'hardlink' ? this.linkedNode(entry, context) : this.newNode(entry, context.layer.tarPath);
    const parent = parentPath(entry.path);
    const recent = this.recentDirectories.find((known) => known.path === parent);
    const directory = recent?.directory ?? this.resolveDirectory(parent, context, entry);
    if (directory.path !== parent) context.redirected(entry.path, joinPath(directory.path, baseName(entry.path)));
    const children = directory.node.children!;
    const existing = children.get(baseName(entry.path));
    if (node.type === 'dir' && existing?.type === 'dir') node.children = existing.children;
    children.set(baseName(entry.path), node);
    // A directory reached through a symlink could go stale from elsewhere (the link replaced), so it is not kept.
    this.recentDirectories = directory.path !== parent ? [] : [{ path: parent, directory }];
    if (node.type === 'dir' && directory.path === parent) {
      this.recentDirectories.push({ path: entry.path, directory: { node, path: entry.path } });
    }
  }

  private newNode(entry: LayerEntry, tarPath: string): Node {
    const node: Node = { type: entry.type as EntryType, mode: entry.mode, uid: entry.uid, gid: entry.gid, mtime: entry.mtime };
    if (entry.xattrs !== undefined) node.xattrs = entry.xattrs;
    switch (entry.type) {
      case 'file':
        node.data = { file: tarPath, offset: entry.dataOffset, size: entry.size, ...(entry.sparse && { sparse: entry.sparse }) };
        node.inode = this.nextInode++;
        break;
      case 'dir':
        node.children = new Map();
        break;
      case 'symlink':
        node.mode = 0o777;
        node.linkTarget = entry.linkname ?? '';
        break;
      case 'char':
      case 'block':
        node.devMajor = entry.devMajor ?? 0;
        node.devMinor = entry.devMinor ?? 0;
        break;
    }
    return node;
  }

  /** A hard link: a copy of its target sharing the target's inode key. */
  private linkedNode(entry: LayerEntry, context: LayerContext): Node {
    const targetPath = entry.linkname!;
    const target = this.resolveDirectory(parentPath(targetPath), context)?.node.children!.get(baseName(targetPath));
    if (target === undefined || target.type === 'dir') {
      const problem = target === undefined ? 'which does not exist at that point' : 'which is a directory';
      throw context.error(`hard link "${displayPath(entry.path)}" points to "${displayPath(targetPath)}", ${problem}`);
    }
    target.inode ??= this.nextInode++;
    return { ...target };
  }

  /**
   * The directory at `path`, following symlinks inside the root. When adding
   * `entry`, missing directories are created and a non-directory is an error;
   * otherwise (a lookup) both just give undefined.
   */
  private resolveDirectory(path: string, context: LayerContext, entry: LayerEntry): ResolvedDirectory;
  private resolveDirectory(path: string, context: LayerContext): ResolvedDirectory | undefined;
  private resolveDirectory(path: string, context: LayerContext, entry?: LayerEntry): ResolvedDirectory | undefined {
    const pending = splitPath(path).reverse(); // a stack: the next component is last
    const trail: { name: string; node: Node }[] = [];
    let hops = 0;
    while (pending.length > 0) {
      const name = pending.pop()!;
      if (name === '.' || name === '') continue;
      if (name === '..') {
        trail.pop();
        continue;
      }
      const current = trail.at(-1)?.node ?? this.root;
      let child = current.children!.get(name);
      if (child === undefined) {
        if (entry === undefined) return undefined;
        child = { type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: entry.mtime, children: new Map() };
        current.children!.set(name, child);
      }
      if (child.type === 'symlink') {
        if (++hops > MAX_SYMLINK_HOPS) {
          if (entry === undefined) return undefined;
          throw context.error(`too many levels of symbolic links in the parents of "${displayPath(entry.path)}"`);
        }
        if (child.linkTarget!.length >= MAX_NAME_SIZE) {
          // Linux refuses such a symlink (ENAMETOOLONG), so no runtime follows one; nor is the work bounded.
          if (entry === undefined) return undefined;
          throw context.error(`a parent of "${displayPath(entry.path)}" is a symlink whose target is longer than PATH_MAX (${MAX_NAME_SIZE} bytes)`);
        }
        if (child.linkTarget!.startsWith('/')) trail.length = 0;
        // One at a time: a spread of a huge target's components would overflow the stack.
        for (const component of splitPath(child.linkTarget!).reverse()) pending.push(component);
        continue;
      }
      if (child.type !== 'dir') {
        if (entry === undefined) return undefined;
        const at = joinPath(trail.map((step) => step.name).join('/'), name);
        throw context.error(`cannot create "${displayPath(entry.path)}": its parent "${displayPath(at)}" is a ${child.type}, not a directory`);
      }
      trail.push({ name, node: child });
    }
    return { node: trail.at(-1)?.node ?? this.root, path: trail.map((step) => step.name).join('/') };
  }
}

/** An owner newc cannot hold is refused here, where the layer that holds it is known. */
function checkOwner(entry: LayerEntry, context: LayerContext): void {
  for (const [field, value] of [['uid', entry.uid], ['gid', entry.gid]] as const) {
    if (!Number.isSafeInteger(value) || value < 0 || value > MAX_U32) {
      throw context.error(`${field} ${value} of "${displayPath(entry.path)}" does not fit in newc's 32-bit field`);
    }
  }
}

/** Per-layer bookkeeping: error context and warnings worth one line each. */
class LayerContext {
  readonly layer: UnpackedLayer;
  skipped = 0;
  private redirections = 0;
  private firstRedirection = '';

  constructor(layer: UnpackedLayer) {
    this.layer = layer;
  }

  redirected(from: string, to: string): void {
    if (this.redirections++ === 0) this.firstRedirection = `"${displayPath(from)}" -> "${displayPath(to)}"`;
  }

  error(problem: string): InputError {
    return new InputError(`layer ${this.layer.diffId}: ${problem}`, {
      hint: 'the image layers are inconsistent; rebuild the image',
    });
  }

  warnings(): string[] {
    const warnings: string[] = [];
    if (this.redirections > 0) {
      warnings.push(
        `layer ${this.layer.diffId}: ${this.redirections} entries have a symlink among their parent directories and were placed at its target (first: ${this.firstRedirection})`,
      );
    }
    if (this.skipped > 0) {
      warnings.push(`layer ${this.layer.diffId}: skipped ${this.skipped} aufs metadata entries (.wh..wh.* names and paths below whiteout names)`);
    }
    return warnings;
  }
}

/** Whether a layer path is a whiteout, aufs metadata to skip, or a real entry. */
function classify(path: string): 'whiteout' | 'skip' | 'entry' {
  const slash = path.lastIndexOf('/');
  const name = path.slice(slash + 1);
  const parent = slash < 0 ? '' : path.slice(0, slash);
  if (parent.startsWith(WHITEOUT_PREFIX) || parent.includes(`/${WHITEOUT_PREFIX}`)) return 'skip';
  if (name === OPAQUE_WHITEOUT) return 'whiteout';
  if (name.startsWith(AUFS_METADATA_PREFIX) || name === WHITEOUT_PREFIX) return 'skip';
  return name.startsWith(WHITEOUT_PREFIX) ? 'whiteout' : 'entry';
}

/**
 * The node as an entry at `path`: its fields but children, each optional one
 * only when set. Field by field, not `{ path, ...rest }`: a rest copy costs a
 * generic runtime call, per entry of every build.
 */
function treeEntry(path: string, node: Node): TreeEntry {
  // A field added to Node fails to compile here until it is copied below.
  const everyFieldCopied: [Exclude<keyof Node, 'children' | 'type' | 'mode' | 'uid' | 'gid' | 'mtime' | 'data' | 'linkTarget' | 'devMajor' | 'devMinor' | 'inode' | 'xattrs'>] extends [never] ? true : false = true;
  void everyFieldCopied;
  const entry: { -readonly [K in keyof TreeEntry]: TreeEntry[K] } = { path, type: node.type, mode: node.mode, uid: node.uid, gid: node.gid, mtime: node.mtime };
  if (node.data !== undefined) entry.data = node.data;
  if (node.linkTarget !== undefined) entry.linkTarget = node.linkTarget;
  if (node.devMajor !== undefined) entry.devMajor = node.devMajor;
  if (node.devMinor !== undefined) entry.devMinor = node.devMinor;
  if (node.inode !== undefined) entry.inode = node.inode;
  if (node.xattrs !== undefined) entry.xattrs = node.xattrs;
  return entry;
}

/** A directory's children sorted by name; layers in walk order insert them sorted already. */
function byName(children: Map<string, Node>): Iterator<[string, Node]> {
  const list = [...children];
  const sorted = list.every(([name], index) => index === 0 || list[index - 1]![0] < name);
  return (sorted ? list : list.sort(([a], [b]) => (a < b ? -1 : 1))).values();
}

function splitPath(path: string): string[] {
  return path === '' ? [] : path.split('/');
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function joinPath(directory: string, name: string): string {
  return directory === '' ? name : `${directory}/${name}`;
}
