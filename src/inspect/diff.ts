/** What changed between two initramfs files: entries added, removed and changed, with size deltas. */
import { dataFiles, type InitramfsContents, type InitramfsEntry } from './initramfs.ts';

/** The attributes a change can be in, in the order they are reported. */
const ATTRIBUTES = ['type', 'content', 'mode', 'owner', 'target', 'device'] as const;
export type ChangedAttribute = (typeof ATTRIBUTES)[number];

export interface EntryDelta {
  path: string;
  type: InitramfsEntry['type'];
  /** Size in A (0 when added) and in B (0 when removed). */
  sizeBefore: number;
  sizeAfter: number;
  /** What differs (changed entries only). */
  changed?: ChangedAttribute[];
}

export interface SideTotals {
  file: string;
  size: number;
  uncompressedSize: number;
  entries: number;
  fileBytes: number;
}

export interface InitramfsDiff {
  a: SideTotals;
  b: SideTotals;
  added: EntryDelta[];
  removed: EntryDelta[];
  changed: EntryDelta[];
  unchanged: number;
  /** B minus A. */
  delta: { size: number; uncompressedSize: number; entries: number; fileBytes: number };
}

function attributeDiffers(attribute: ChangedAttribute, a: InitramfsEntry, b: InitramfsEntry): boolean {
  switch (attribute) {
    case 'type':
      return a.type !== b.type;
    case 'content':
      return a.sha256 !== b.sha256 || a.size !== b.size;
    case 'mode':
      return a.mode !== b.mode;
    case 'owner':
      return a.uid !== b.uid || a.gid !== b.gid;
    case 'target':
      return a.linkTarget !== b.linkTarget;
    case 'device':
      return a.device !== b.device;
  }
}

function totals(contents: InitramfsContents): SideTotals {
  return {
    file: contents.file,
    size: contents.size,
    uncompressedSize: contents.uncompressedSize,
    entries: contents.entries.length,
    fileBytes: dataFiles(contents.entries).reduce((sum, file) => sum + file.size, 0),
  };
}

/** Compares by path; mtimes and inode numbers are ignored (they say nothing about what the VM gets). */
export function diffInitramfs(a: InitramfsContents, b: InitramfsContents): InitramfsDiff {
  const before = new Map(a.entries.map((entry) => [entry.path, entry]));
  const after = new Map(b.entries.map((entry) => [entry.path, entry]));
  const added = b.entries.filter((entry) => !before.has(entry.path)).map((entry) => delta(undefined, entry));
  const removed = a.entries.filter((entry) => !after.has(entry.path)).map((entry) => delta(entry, undefined));
  const changed: EntryDelta[] = [];
  let unchanged = 0;
  for (const entry of b.entries) {
    const old = before.get(entry.path);
    if (old === undefined) continue;
    const differences = ATTRIBUTES.filter((attribute) => attributeDiffers(attribute, old, entry));
    if (differences.length === 0) unchanged += 1;
    else changed.push({ ...delta(old, entry), changed: differences });
  }
  const sideA = totals(a);
  const sideB = totals(b);
  return {
    a: sideA,
    b: sideB,
    added,
    removed,
    changed,
    unchanged,
    delta: {
      size: sideB.size - sideA.size,
      uncompressedSize: sideB.uncompressedSize - sideA.uncompressedSize,
      entries: sideB.entries - sideA.entries,
      fileBytes: sideB.fileBytes - sideA.fileBytes,
    },
  };
}

function delta(before: InitramfsEntry | undefined, after: InitramfsEntry | undefined): EntryDelta {
  const entry = (after ?? before)!;
  return { path: entry.path, type: entry.type, sizeBefore: before?.size ?? 0, sizeAfter: after?.size ?? 0 };
}
