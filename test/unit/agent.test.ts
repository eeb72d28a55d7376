import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkAgentBinary, readElfInfo } from '../../src/agent/elf.ts';
import { DEFAULT_PATH, injectAgent, mergeEnv, type InjectOptions } from '../../src/agent/inject.ts';
import { InputError } from '../../src/errors.ts';
import type { ResolvedImage } from '../../src/oci/content.ts';
import { parentPath, sortByTreePath, type TreeEntry } from '../../src/tree/entry.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { seededRandom } from '../helpers/random.ts';

/** A minimal ELF64 header with the given machine, as a cross-compiler would emit it. */
function elfHeader(machine: number, elfClass = 2): Buffer {
  const header = Buffer.alloc(64);
  header.write('\x7fELF', 0, 'latin1');
  header[4] = elfClass;
  header[5] = 1;
  header.writeUInt16LE(2, 16);
  header.writeUInt16LE(machine, 18);
  return header;
}

describe('agent ELF check', () => {
  it('accepts a static agent for its arch and reports no interpreter', async () => {
    const agent = readFileSync(await buildTestAgent('x86_64'));
    expect(checkAgentBinary(agent, 'x86_64', 'agent')).toEqual({ arch: 'x86_64', interpreter: undefined });
  });

  it('reports the loader of a dynamically linked binary', () => {
    expect(readElfInfo(readFileSync('/bin/ls'), '/bin/ls').interpreter).toMatch(/ld-linux-x86-64\.so\.2$/);
  });

  it('names the arch mismatch and the file', () => {
    expect(() => checkAgentBinary(elfHeader(183), 'x86_64', 'a/agent')).toThrow('agent a/agent is built for aarch64, but the image is for x86_64');
    expect(() => checkAgentBinary(elfHeader(40), 'x86_64', 'a/agent')).toThrow('built for arm, which rampack does not target');
    expect(() => checkAgentBinary(elfHeader(62, 1), 'x86_64', 'a/agent')).toThrow('not a 64-bit');
    expect(() => checkAgentBinary(Buffer.from('#!/bin/sh\n'), 'x86_64', 'a/agent')).toThrow(InputError);
  });
});

const image: ResolvedImage = {
  reference: 'oci:/x:1',
  manifestDigest: 'sha256:m',
  configDigest: 'sha256:c',
  manifest: { schemaVersion: 2, config: { mediaType: '', digest: 'sha256:c', size: 1 }, layers: [] },
  layers: [],
  config: { rootfs: { type: 'layers', diff_ids: [] }, config: { Env: ['HOME=/root', 'LANG=C'], WorkingDir: '/work', Cmd: ['sh'] } },
};

function options(overrides: Partial<InjectOptions> = {}): InjectOptions {
  return { image, language: 'go', version: '1', arch: 'x86_64', agent: Buffer.from('AGENT'), agentSha256: 'ff', mtime: 42, ...overrides };
}

const dir = (path: string, mode = 0o755): TreeEntry => ({ path, type: 'dir', mode, uid: 5, gid: 5, mtime: 1 });
const file = (path: string): TreeEntry => ({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, data: Buffer.from(path) });

describe('agent injection', () => {
  it('adds /init, image.json, /dev/console and missing mount points, sorted, keeping the image’s dirs', () => {
    const injected = injectAgent([dir('etc', 0o700), file('etc/hosts'), dir('tmp', 0o777)], options({ extraEnv: ['LANG=C.UTF-8'] }));
    const { imageJson } = injected;
    expect(injected.image.map((e) => e.path)).toEqual(['etc', 'etc/hosts', 'tmp']);
    const entries = [...injected.image, ...injected.added].sort((a, b) => (a.path < b.path ? -1 : 1));
    expect(entries.map((e) => e.path)).toEqual([
      'dev', 'dev/console', 'etc', 'etc/hosts', 'etc/rampack', 'etc/rampack/image.json', 'init', 'proc', 'root', 'run', 'sys', 'tmp',
    ]);
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('etc')).toMatchObject({ mode: 0o700, uid: 5 });
    expect(byPath.get('tmp')).toMatchObject({ mode: 0o777 });
    expect(byPath.get('init')).toMatchObject({ type: 'file', mode: 0o755, uid: 0, gid: 0, mtime: 42 });
    expect(byPath.get('dev/console')).toMatchObject({ type: 'char', devMajor: 5, devMinor: 1, mode: 0o600 });
    expect(byPath.get('root')).toMatchObject({ mode: 0o700 });
    expect(imageJson).toMatchObject({ env: ['HOME=/root', 'LANG=C.UTF-8', DEFAULT_PATH], workingDir: '/work', cmd: ['sh'], entrypoint: [], user: '' });
    expect(JSON.parse((byPath.get('etc/rampack/image.json')!.data as Buffer).toString())).toEqual(imageJson);
  });

  it('replaces an /init directory with its subtree and records dropped xattrs', () => {
    const xattr = { path: 'usr/bin/ping', name: 'security.capability', value: Buffer.from([1, 2]) };
    const replaced = { path: 'init/x', name: 'user.note', value: Buffer.from('x') };
    const dropped = { path: 'usr/bin/gone', name: 'user.note', value: Buffer.from('x') };
    const image = [dir('init'), file('init/x'), dir('usr'), dir('usr/bin'), file('usr/bin/ping')];
    const { image: kept, added, recordedXattrs } = injectAgent(image, options({ droppedXattrs: [xattr, replaced, dropped] }));
    const entries = [...kept, ...added];
    expect(entries.some((e) => e.path === 'init/x' || e.path === 'init' && e.type === 'dir')).toBe(false);
    expect(recordedXattrs).toEqual([xattr]);
    const record = entries.find((e) => e.path === 'etc/rampack/xattrs.json')!;
    expect(JSON.parse((record.data as Buffer).toString()).xattrs).toEqual([{ path: '/usr/bin/ping', name: 'security.capability', value: 'AQI=' }]);
  });

  it('refuses an image whose /dev is a regular file', () => {
    expect(() => injectAgent([file('dev')], options())).toThrow('has a file at /dev, where the initramfs needs a directory');
  });

  it('merges like a map of the whole tree would, on random trees around the paths it adds', () => {
    // Names next to the added ones in walk order ("init!" sorts between "init" and its subtree's end) probe the range arithmetic.
    const names = ['dev', 'console', 'etc', 'rampack', 'image.json', 'xattrs.json', 'init', 'init!', 'init-x', 'tmp', 'a'];
    for (let seed = 1; seed <= 400; seed++) {
      const random = seededRandom(seed);
      const pick = <T,>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
      const tree = new Map<string, TreeEntry>();
      const grow = (parent: string, depth: number) => {
        for (let i = 0, count = Math.floor(random() * 4); i < count; i++) {
          const path = parent ? `${parent}/${pick(names)}` : pick(names);
          if (tree.has(path)) continue;
          const kind = depth < 3 ? pick(['dir', 'dir', 'file', 'symlink'] as const) : 'file';
          if (kind === 'dir') tree.set(path, dir(path));
          else if (kind === 'file') tree.set(path, file(path));
          else tree.set(path, { path, type: 'symlink', mode: 0o777, uid: 0, gid: 0, mtime: 1, linkTarget: 'a' });
          if (kind === 'dir') grow(path, depth + 1);
        }
      };
      grow('', 0);
      const entries = sortByTreePath(tree.values());
      const droppedXattrs = entries.filter(() => random() < 0.2).map((entry) => ({ path: entry.path, name: 'user.x', value: Buffer.from('v') }));
      const outcome = (inject: typeof injectAgent) => {
        try {
          const { image: kept, added, recordedXattrs } = inject(entries, options({ droppedXattrs }));
          return { kept: kept.map((e) => e.path), added: added.map((e) => e.path), xattrs: recordedXattrs.map((x) => x.path) };
        } catch (error) {
          return { error: (error as Error).message };
        }
      };
      expect(outcome(injectAgent), `seed ${seed}`).toEqual(outcome(injectWithMap));
    }
  });

  it('keeps the image PATH when it has one', () => {
    expect(mergeEnv(['PATH=/go/bin', 'A=1'], ['A=2'])).toEqual(['PATH=/go/bin', 'A=2']);
  });
});

/** The merge spelled out with a map of the whole tree: the reference the binary-search merge must agree with. */
function injectWithMap(entries: readonly TreeEntry[], injectOptions: InjectOptions): ReturnType<typeof injectAgent> {
  const tree = new Map(entries.map((entry) => [entry.path, entry]));
  const empty = injectAgent([], injectOptions);
  const added = empty.added.filter((entry) => entry.path !== 'etc/rampack/xattrs.json' && (entry.type !== 'dir' || !tree.has(entry.path)));
  for (const path of ['dev', 'etc', 'etc/rampack', 'proc', 'root', 'run', 'sys', 'tmp']) {
    const existing = tree.get(path);
    if (existing !== undefined && existing.type !== 'dir' && existing.type !== 'symlink') {
      throw new InputError(`image ${injectOptions.image.reference} has a ${existing.type} at /${path}, where the initramfs needs a directory`);
    }
  }
  const put = (entry: TreeEntry) => {
    if (tree.get(entry.path)?.type === 'dir') for (const path of [...tree.keys()]) if (path.startsWith(`${entry.path}/`)) tree.delete(path);
    if (entry.path.includes('/') && tree.get(parentPath(entry.path))?.type === 'symlink') {
      throw new InputError(`image ${injectOptions.image.reference} has /${parentPath(entry.path)} as a symlink; rampack cannot add /${entry.path}`);
    }
    tree.set(entry.path, entry);
  };
  for (const entry of sortByTreePath(added)) put(entry);
  const recordedXattrs = (injectOptions.droppedXattrs ?? []).filter((x) => tree.get(x.path) !== undefined && !added.includes(tree.get(x.path)!));
  if (recordedXattrs.length > 0) {
    const record: TreeEntry = { path: 'etc/rampack/xattrs.json', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 42 };
    put(record);
    added.push(record);
  }
  return { image: entries.filter((entry) => tree.get(entry.path) === entry), added: sortByTreePath(added), imageJson: empty.imageJson, recordedXattrs };
}
