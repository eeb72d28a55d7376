/**
 * Transforms that leave entries out of a tree, and what they saved: path
 * globs (a recipe's `drop`), and the counts every such step reports (drop,
 * slim). They know trees only, not recipes.
 */
import { bytePath, dataSize, parentPath, type TreeEntry } from './entry.ts';

export interface DropResult {
  entries: TreeEntry[];
  /** Entries left out. */
  removed: number;
  /** File data no longer carried (hard links counted once, and only when no link stays). */
  bytesSaved: number;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.+^${}()|[\]\\]/g, '\\$&');
}

/**
 * A glob over tree paths: `*` and `?` stay within one component, `**` spans
 * any number of components (`usr/share/doc/**` is everything below
 * usr/share/doc, not the directory itself). A leading "/" is ignored.
 */
export function globToRegExp(pattern: string): RegExp {
  const segments = bytePath(pattern.replace(/^\/+/, '')).split('/');
  const source = segments
    .map((segment, i) => {
      const last = i === segments.length - 1;
      if (segment === '**') return last ? '.*' : '(?:[^/]*/)*';
      const body = [...segment].map((c) => (c === '*' ? '[^/]*' : c === '?' ? '[^/]' : escapeRegExp(c))).join('');
      return last ? body : `${body}/`;
    })
    .join('');
  return new RegExp(`^${source}$`, 's');
}

/** Hard links share an inode key: data is carried once per inode. */
function dataKey(entry: TreeEntry): string {
  return entry.inode === undefined ? `path:${entry.path}` : `inode:${entry.inode}`;
}

/** What a transform left out of `all` to get `kept` (a subsequence of it): counts and file data saved. */
export function treeDifference(all: readonly TreeEntry[], kept: TreeEntry[]): DropResult {
  const keptData = new Set(kept.map(dataKey));
  const droppedData = new Map<string, number>();
  for (const entry of all) if (!keptData.has(dataKey(entry))) droppedData.set(dataKey(entry), dataSize(entry));
  const bytesSaved = [...droppedData.values()].reduce((sum, size) => sum + size, 0);
  return { entries: kept, removed: all.length - kept.length, bytesSaved };
}

/** Leaves out every entry a pattern matches, with the subtree of matched directories. */
export function dropPaths(entries: readonly TreeEntry[], patterns: readonly string[]): DropResult {
  if (patterns.length === 0) return { entries: [...entries], removed: 0, bytesSaved: 0 };
  const matchers = patterns.map(globToRegExp);
  const droppedDirs = new Set<string>();
  const kept: TreeEntry[] = [];
  for (const entry of entries) {
    // Parents come first, so a dropped ancestor is already known.
    if (droppedDirs.has(parentPath(entry.path)) || matchers.some((matcher) => matcher.test(entry.path))) {
      if (entry.type === 'dir') droppedDirs.add(entry.path);
    } else {
      kept.push(entry);
    }
  }
  return treeDifference(entries, kept);
}

/** What the slim step kept and dropped, for the build log and /etc/rampack/image.json (`rampack inspect`). */
export interface SlimSummary {
  keptEntries: number;
  removedEntries: number;
  /** File data kept and dropped (hard links once). */
  keptBytes: number;
  droppedBytes: number;
}
