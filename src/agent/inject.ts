/**
 * What rampack adds to the image's tree so it boots as an initramfs: the agent
 * as /init, the image's runtime settings in /etc/rampack/image.json, the
 * dropped extended attributes in /etc/rampack/xattrs.json, /dev/console and
 * the mount points the agent needs. docs/initramfs-layout.md is the contract.
 */
import { InputError } from '../errors.ts';
import type { Arch, ResolvedImage } from '../oci/content.ts';
import type { SlimSummary } from '../tree/transforms.ts';
import { displayPath, parentPath, sortByTreePath, sortedIndexOf, type TreeEntry } from '../tree/entry.ts';

/** Docker's PATH for images whose config sets none. */
export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const IMAGE_JSON_SCHEMA_VERSION = 1;

/** Directories the agent relies on, with the modes used when the image lacks them. */
const REQUIRED_DIRS: ReadonlyArray<[path: string, mode: number]> = [
  ['dev', 0o755],
  ['etc', 0o755],
  ['etc/rampack', 0o755],
  ['proc', 0o555],
  ['root', 0o700],
  ['run', 0o755],
  ['sys', 0o555],
  ['tmp', 0o1777],
];

export interface ImageJson {
  schemaVersion: number;
  language: string;
  version: string;
  arch: Arch;
  image: { reference: string; manifestDigest: string; configDigest: string };
  agent: { sha256: string };
  env: string[];
  workingDir: string;
  user: string;
  entrypoint: string[];
  cmd: string[];
  /** Present in a slim variant: what the slim step kept and dropped. */
  variant?: 'slim';
  slim?: SlimSummary;
}

export interface DroppedXattr {
  path: string;
  name: string;
  value: Buffer;
}

export interface InjectOptions {
  image: ResolvedImage;
  language: string;
  version: string;
  arch: Arch;
  agent: Buffer;
  agentSha256: string;
  /** Extra KEY=VALUE pairs that override the image's Env. */
  extraEnv?: readonly string[];
  droppedXattrs?: readonly DroppedXattr[];
  /** mtime of every added entry (reproducible builds). */
  mtime: number;
  /** Set for a slim variant. */
  slim?: SlimSummary;
}

/** Image Env with overrides applied, keeping the image's order, PATH guaranteed. */
export function mergeEnv(imageEnv: readonly string[], overrides: readonly string[]): string[] {
  const merged = new Map<string, string>();
  for (const pair of [...imageEnv, ...overrides]) {
    const eq = pair.indexOf('=');
    merged.set(eq < 0 ? pair : pair.slice(0, eq), pair);
  }
  if (!merged.has('PATH')) merged.set('PATH', DEFAULT_PATH);
  return [...merged.values()];
}

export function imageJson(options: InjectOptions): ImageJson {
  const settings = options.image.config.config ?? {};
  return {
    schemaVersion: IMAGE_JSON_SCHEMA_VERSION,
    language: options.language,
    version: options.version,
    arch: options.arch,
    image: {
      reference: options.image.reference,
      manifestDigest: options.image.manifestDigest,
      configDigest: options.image.configDigest,
    },
    agent: { sha256: options.agentSha256 },
    env: mergeEnv(settings.Env ?? [], options.extraEnv ?? []),
    workingDir: settings.WorkingDir || '/',
    user: settings.User ?? '',
    entrypoint: settings.Entrypoint ?? [],
    cmd: settings.Cmd ?? [],
    ...(options.slim ? { variant: 'slim' as const, slim: options.slim } : {}),
  };
}

function xattrsJson(xattrs: readonly DroppedXattr[]): string {
  const records = xattrs.map((x) => ({ path: `/${displayPath(x.path)}`, name: x.name, value: x.value.toString('base64') }));
  return `${JSON.stringify({ schemaVersion: 1, xattrs: records }, null, 2)}\n`;
}

/** Entries rampack adds; directories only where the image has none. */
function addedEntries(tree: MergedTree, options: InjectOptions, settings: ImageJson): TreeEntry[] {
  const owner = { uid: 0, gid: 0, mtime: options.mtime };
  const added: TreeEntry[] = [];
  for (const [path, mode] of REQUIRED_DIRS) {
    const existing = tree.get(path);
    if (existing === undefined) added.push({ path, type: 'dir', mode, ...owner });
    else if (existing.type !== 'dir' && existing.type !== 'symlink') {
      throw new InputError(`image ${options.image.reference} has a ${existing.type} at /${path}, where the initramfs needs a directory`);
    }
  }
  const json = `${JSON.stringify(settings, null, 2)}\n`;
  added.push(
    { path: 'init', type: 'file', mode: 0o755, ...owner, data: options.agent },
    { path: 'dev/console', type: 'char', mode: 0o600, ...owner, devMajor: 5, devMinor: 1 },
    { path: 'etc/rampack/image.json', type: 'file', mode: 0o644, ...owner, data: Buffer.from(json) },
  );
  return added;
}

/** The tree split the way it is archived: the image's part, then rampack's. */
export interface InjectedTree {
  /** The image's entries that stay (sorted, parents first): independent of the agent. */
  image: TreeEntry[];
  /** What rampack adds (sorted), replacing the image's entries at those paths. */
  added: TreeEntry[];
  imageJson: ImageJson;
  /** Extended attributes recorded in /etc/rampack/xattrs.json. */
  recordedXattrs: DroppedXattr[];
}

/**
 * Merges rampack's entries into the image tree (sorted, parents first). An
 * added entry replaces what the image had at its path (and that path's
 * subtree when it was a directory); the result keeps the two parts apart so
 * the image's part can be archived and cached on its own.
 */
export function injectAgent(entries: readonly TreeEntry[], options: InjectOptions): InjectedTree {
  const tree = new MergedTree(entries, options.image.reference);
  const settings = imageJson(options);
  const added = addedEntries(tree, options, settings);
  for (const entry of added) tree.add(entry);
  // Only attributes of the image's own files that are still in the tree: never
  // those of files rampack replaced (an image's /init) or a recipe dropped.
  const recordedXattrs = (options.droppedXattrs ?? []).filter((x) => tree.isImageEntry(x.path));
  if (recordedXattrs.length > 0) {
    const data = Buffer.from(xattrsJson(recordedXattrs));
    const record: TreeEntry = { path: 'etc/rampack/xattrs.json', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: options.mtime, data };
    tree.add(record);
    added.push(record);
  }
  return { image: tree.imageEntries(), added: sortByTreePath(added), imageJson: settings, recordedXattrs };
}

/**
 * The image's sorted entries with a few entries added over them. Lookups are
 * binary searches and a replaced subtree is one index range (walk order keeps
 * a subtree together): no map of the whole tree for a handful of paths.
 */
class MergedTree {
  readonly #image: readonly TreeEntry[];
  readonly #reference: string;
  readonly #added = new Map<string, TreeEntry>();
  /** Index ranges [start, end) of image entries that added ones replaced. */
  readonly #replaced: [start: number, end: number][] = [];

  constructor(image: readonly TreeEntry[], reference: string) {
    this.#image = image;
    this.#reference = reference;
  }

  /** The entry at `path`: an added one, else the image's unless replaced. */
  get(path: string): TreeEntry | undefined {
    return this.#added.get(path) ?? this.#imageEntryAt(path)?.entry;
  }

  /** Whether the image's own entry at `path` is still in the tree. */
  isImageEntry(path: string): boolean {
    return this.#imageEntryAt(path) !== undefined;
  }

  /** Puts an entry in the tree, replacing what was at its path (and that path's subtree). */
  add(entry: TreeEntry): void {
    if (entry.path.includes('/') && this.get(parentPath(entry.path))?.type === 'symlink') {
      throw new InputError(`image ${this.#reference} has /${parentPath(entry.path)} as a symlink; rampack cannot add /${entry.path}`);
    }
    const existing = this.#imageEntryAt(entry.path);
    if (existing !== undefined) {
      const prefix = `${entry.path}/`;
      let end = existing.index + 1;
      while (this.#image[end]?.path.startsWith(prefix)) end++;
      this.#replaced.push([existing.index, end]);
    }
    this.#added.set(entry.path, entry);
  }

  /** The image's entries that stay, in their order. */
  imageEntries(): TreeEntry[] {
    const ranges = [...this.#replaced].sort(([a], [b]) => a - b);
    const kept: TreeEntry[] = [];
    let next = 0;
    for (const [start, end] of [...ranges, [this.#image.length, this.#image.length] as const]) {
      for (let index = next; index < start; index++) kept.push(this.#image[index]!);
      next = Math.max(next, end);
    }
    return kept;
  }

  #imageEntryAt(path: string): { entry: TreeEntry; index: number } | undefined {
    const index = sortedIndexOf(this.#image, path);
    const entry = this.#image[index];
    if (entry?.path !== path || this.#replaced.some(([start, end]) => index >= start && index < end)) return undefined;
    return { entry, index };
  }
}
