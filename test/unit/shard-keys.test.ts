/**
 * Shard keys are derived from what the writer emits (src/pipeline/shards.ts
 * shardKeys, planNewcArchive's identify), and the writer's code identity from
 * its sources (src/util/source-identity.ts). The property checked here: for
 * random trees and a random change to any field of any entry, whenever the
 * archive the writer produces changes, the key changes, and when the writer
 * refuses the tree, so does the key computation.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shardEntries, shardKeys, type ArchiveSettings } from '../../src/pipeline/shards.ts';
import { planNewcArchive } from '../../src/cpio/writer.ts';
import type { EntryType, FileRange, TreeEntry } from '../../src/tree/entry.ts';
import { sourceIdentity } from '../../src/util/source-identity.ts';
import { seededRandom } from '../helpers/random.ts';

let work: string;
/** A content-addressed "layer tar" that ranges point into: the writer really reads it. */
let layerTar: string;
const LAYER_BYTES = 4096;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-shard-keys-'));
  await mkdir(join(work, 'layers', 'sha256'), { recursive: true });
  layerTar = join(work, 'layers', 'sha256', `${'ab'.repeat(32)}.tar`);
  await writeFile(layerTar, Buffer.from(Array.from({ length: LAYER_BYTES }, (_, i) => (i * 7) % 251)));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});


type Random = () => number;
const pick = <T>(next: Random, values: readonly T[]): T => values[Math.floor(next() * values.length)]!;
const int = (next: Random, max: number) => Math.floor(next() * max);

function randomData(next: Random): Buffer | FileRange {
  if (next() < 0.5) return Buffer.from(Array.from({ length: int(next, 40) }, () => int(next, 256)));
  const offset = int(next, LAYER_BYTES / 2);
  const size = int(next, LAYER_BYTES / 2);
  if (next() < 0.7 || size < 2) return { file: layerTar, offset, size };
  // A sparse file: one stored run somewhere in its contents, zeros around it.
  const runOffset = int(next, size - 1);
  return { file: layerTar, offset, size, sparse: [{ offset: runOffset, size: 1 + int(next, size - runOffset - 1) }] };
}

/** The same range with its stored run moved by a byte (when there is room): other contents, same stored bytes. */
function movedSparseRun(data: TreeEntry['data']): TreeEntry['data'] {
  if (data === undefined || Buffer.isBuffer(data)) return data;
  const run = data.sparse?.[0];
  if (run === undefined || run.offset + run.size >= data.size) return data;
  return { ...data, sparse: [{ offset: run.offset + 1, size: run.size }] };
}

/** A valid tree in walk order: directories d0..d2 at the top, entries of every type in them. */
function randomTree(next: Random): TreeEntry[] {
  const entries: TreeEntry[] = [];
  for (let d = 0; d < 3; d++) {
    entries.push({ path: `d${d}`, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: int(next, 1000) });
    for (let i = 0; i < 2 + int(next, 5); i++) {
      const type = pick<EntryType>(next, ['file', 'file', 'file', 'symlink', 'char', 'block', 'fifo']);
      const common = { path: `d${d}/e${i}`, type, mode: 0o600 + int(next, 0o200), uid: int(next, 3), gid: int(next, 3), mtime: int(next, 1000) };
      if (type === 'file') entries.push({ ...common, data: randomData(next), inode: next() < 0.3 ? int(next, 3) : undefined });
      else if (type === 'symlink') entries.push({ ...common, linkTarget: `t${int(next, 5)}` });
      else if (type === 'char' || type === 'block') entries.push({ ...common, devMajor: int(next, 3), devMinor: int(next, 3) });
      else entries.push(common);
    }
  }
  return entries;
}

/** Every field a TreeEntry has, each changed to another value (the writer may or may not read it). */
const MUTATIONS: ((entry: TreeEntry, next: Random) => TreeEntry)[] = [
  (e) => ({ ...e, path: `${e.path}x` }),
  (e, next) => ({ ...e, type: pick<EntryType>(next, ['file', 'dir', 'symlink', 'char', 'block', 'fifo']) }),
  (e, next) => ({ ...e, mode: e.mode ^ (1 << int(next, 12)) }),
  (e) => ({ ...e, uid: e.uid + 1 }),
  (e) => ({ ...e, gid: e.gid + 1 }),
  (e, next) => ({ ...e, mtime: e.mtime + (next() < 0.5 ? 1 : 0.5) }),
  (e, next) => ({ ...e, data: randomData(next) }),
  (e) => ({ ...e, data: e.data === undefined || Buffer.isBuffer(e.data) ? e.data : { ...e.data, offset: e.data.offset + 1 } }),
  (e) => ({ ...e, data: movedSparseRun(e.data) }),
  (e) => ({ ...e, data: Buffer.isBuffer(e.data) && e.data.length > 0 ? Buffer.from(e.data.map((byte, i) => (i === 0 ? byte ^ 1 : byte))) : e.data }),
  (e, next) => ({ ...e, linkTarget: `t${int(next, 5)}` }),
  (e) => ({ ...e, devMajor: (e.devMajor ?? 0) + 1 }),
  (e) => ({ ...e, devMinor: (e.devMinor ?? 0) + 1 }),
  (e, next) => ({ ...e, inode: next() < 0.3 ? undefined : int(next, 4) }),
  (e) => ({ ...e, xattrs: { 'user.x': Buffer.from('y') } }),
];

const SETTINGS: ArchiveSettings[] = [{ compression: 'gzip' }, { compression: 'zstd', level: 5 }, { compression: 'none', clampMtime: 500 }];

/** The uncompressed bytes of the image part as the shard writer makes them, or "refused" when it throws. */
function archiveOf(shards: readonly TreeEntry[][], settings: ArchiveSettings): Buffer | 'refused' {
  try {
    const present = new Set<string>();
    return Buffer.concat(
      shards.map((entries) => {
        const plan = planNewcArchive(entries, { clampMtime: settings.clampMtime, presentDirectories: new Set(present) });
        entries.filter((e) => e.type === 'dir').forEach((e) => present.add(e.path));
        const bytes = Buffer.alloc(plan.size);
        plan.writeInto(bytes);
        return bytes;
      }),
    );
  } catch {
    return 'refused';
  }
}

function keyOf(shards: readonly TreeEntry[][], settings: ArchiveSettings): string {
  try {
    return shardKeys(shards, settings).at(-1)!;
  } catch {
    return 'refused';
  }
}

describe('shard keys derived from what the writer emits', () => {
  it('change whenever a change to any entry field changes the archive (random trees)', () => {
    let changedArchives = 0;
    for (let seed = 1; seed <= 400; seed++) {
      const next = seededRandom(seed);
      const settings = SETTINGS[seed % SETTINGS.length]!;
      const tree = randomTree(next);
      const index = int(next, tree.length);
      const mutated = tree.with(index, MUTATIONS[seed % MUTATIONS.length]!(tree[index]!, next));
      const shardBytes = 1 + int(next, 64);
      const [before, after] = [tree, mutated].map((entries) => shardEntries(entries, shardBytes));
      const [archiveBefore, archiveAfter] = [before!, after!].map((shards) => archiveOf(shards, settings));
      const [keyBefore, keyAfter] = [before!, after!].map((shards) => keyOf(shards, settings));
      const context = `seed ${seed}`;
      expect(archiveBefore, context).not.toBe('refused');
      expect(keyBefore, context).not.toBe('refused');
      expect(keyAfter === 'refused', context).toBe(archiveAfter === 'refused');
      const same = archiveAfter !== 'refused' && (archiveBefore as Buffer).equals(archiveAfter) && before!.length === after!.length;
      if (!same) {
        changedArchives++;
        expect(keyAfter, context).not.toBe(keyBefore);
      }
    }
    // The property is not vacuous: most mutations change the archive.
    expect(changedArchives).toBeGreaterThan(200);
  });

  it('are equal for trees the writer writes the same (inode numbers and cache location do not count)', () => {
    const file = (path: string, inode: number | undefined, file = layerTar): TreeEntry => ({
      path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, inode, data: { file, offset: 0, size: 10 },
    });
    const dir: TreeEntry = { path: 'd', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1 };
    const settings: ArchiveSettings = { compression: 'gzip' };
    const moved = join(work, 'elsewhere', 'layers', 'sha256', `${'ab'.repeat(32)}.tar`);
    expect(keyOf([[dir, file('d/a', 1), file('d/b', 1)]], settings)).toBe(keyOf([[dir, file('d/a', 9, moved), file('d/b', 9, moved)]], settings));
    // What the writer ignores: the inode key of a lone file, xattrs (newc has no room for them).
    expect(keyOf([[dir, file('d/a', undefined)]], settings)).toBe(keyOf([[dir, { ...file('d/a', 4), xattrs: { 'user.a': Buffer.from('b') } }]], settings));
  });
});

describe('source identity (the code that writes a cached file)', () => {
  it('changes when any module the root imports, directly or not, changes', async () => {
    const identityWith = async (name: string, leaf: string) => {
      const dir = join(work, name);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'root.ts'), "import { middle } from './middle.ts';\nexport const root = middle;\n");
      await writeFile(join(dir, 'middle.ts'), 'export { leaf as middle } from "./leaf.js";\n');
      await writeFile(join(dir, 'leaf.js'), leaf);
      return sourceIdentity(pathToFileURL(join(dir, 'root.ts')));
    };
    const first = await identityWith('one', 'export const leaf = 1;\n');
    expect(await identityWith('two', 'export const leaf = 1;\n')).toBe(first);
    expect(await identityWith('three', 'export const leaf = 2;\n')).not.toBe(first);
  });
});
