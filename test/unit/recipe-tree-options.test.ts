import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { addFiles } from '../../src/pipeline/tree-options.ts';
import { dropPaths, globToRegExp } from '../../src/tree/transforms.ts';
import { compareTreePaths, type TreeEntry } from '../../src/tree/entry.ts';
import { testDirectory } from '../helpers/temp.ts';

const dir = (path: string): TreeEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1 });
const file = (path: string, size: number, inode?: number): TreeEntry => ({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, data: Buffer.alloc(size), inode });

/** A sorted tree with docs, man pages, an apt cache and a hard link into the docs. */
const TREE: TreeEntry[] = [
  dir('usr'), dir('usr/bin'), file('usr/bin/tool', 100, 1), dir('usr/share'), dir('usr/share/doc'), dir('usr/share/doc-base'),
  file('usr/share/doc-base/x', 1), dir('usr/share/doc/pkg'), file('usr/share/doc/pkg/README', 10), file('usr/share/doc/pkg/tool-link', 100, 1),
  file('usr/share/doc/pkg/LICENSE', 20, 2), dir('usr/share/man'), dir('usr/share/man/man1'), file('usr/share/man/man1/tool.1.gz', 30),
  file('usr/share/legal', 20, 2), dir('var'), dir('var/cache'), dir('var/cache/apt'), file('var/cache/apt/pkgcache.bin', 1000),
];

describe('drop globs', () => {
  it.each([
    ['usr/share/doc/**', 'usr/share/doc/a/b', true],
    ['usr/share/doc/**', 'usr/share/doc', false],
    ['usr/share/doc/**', 'usr/share/doc-base/x', false],
    ['/var/cache/apt/**', 'var/cache/apt/archives/x.deb', true],
    ['**/*.pyc', 'usr/lib/python3/__pycache__/a.cpython-314.pyc', true],
    ['**/*.pyc', 'a.pyc', true],
    ['usr/*/doc', 'usr/share/doc', true],
    ['usr/*/doc', 'usr/share/x/doc', false],
    ['usr/lib/**/tests', 'usr/lib/tests', true],
    ['usr/lib/**/tests', 'usr/lib/python/site/tests', true],
    ['etc/?.conf', 'etc/a.conf', true],
    ['etc/?.conf', 'etc/ab.conf', false],
    ['a.b', 'axb', false],
  ])('%s matching %s is %s', (pattern, path, expected) => {
    expect(globToRegExp(pattern).test(path)).toBe(expected);
  });
});

describe('dropPaths', () => {
  it('drops matches with their subtrees and counts the data no longer carried', () => {
    const result = dropPaths(TREE, ['usr/share/doc/**', 'usr/share/man', 'var/cache/apt/**']);
    expect(result.entries.map((e) => e.path)).toEqual([
      'usr', 'usr/bin', 'usr/bin/tool', 'usr/share', 'usr/share/doc', 'usr/share/doc-base', 'usr/share/doc-base/x', 'usr/share/legal',
      'var', 'var/cache', 'var/cache/apt',
    ]);
    expect(result.removed).toBe(TREE.length - 11);
    // README 10 + man page 30 + apt cache 1000; the hard links stay carried through usr/bin/tool and usr/share/legal.
    expect(result.bytesSaved).toBe(1040);
  });

  it('saves a hard-linked file when every link goes', () => {
    expect(dropPaths(TREE, ['usr/bin/tool', 'usr/share/doc/**']).bytesSaved).toBe(100 + 10);
  });

  it('leaves the tree alone without patterns', () => {
    expect(dropPaths(TREE, [])).toEqual({ entries: TREE, removed: 0, bytesSaved: 0 });
  });
});

describe('addFiles', () => {
  const work = testDirectory('files');
  const source = join(work, 'run.sh');
  writeFileSync(source, '#!/bin/sh\n');

  it('adds files with mode and owner, creating missing parents, keeping the tree sorted', async () => {
    const extra = { source, destination: '/opt/app/bin/run', mode: 0o750, uid: 1000, gid: 100 };
    const entries = await addFiles(TREE, [extra, { ...extra, destination: '/usr/bin/tool', mode: 0o755, uid: 0, gid: 0 }], 42, 'r.yaml');
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('opt')).toMatchObject({ type: 'dir', mode: 0o755, uid: 0, mtime: 42 });
    expect(byPath.get('opt/app/bin/run')).toMatchObject({ type: 'file', mode: 0o750, uid: 1000, gid: 100, mtime: 42, data: Buffer.from('#!/bin/sh\n') });
    expect(byPath.get('usr/bin/tool')).toMatchObject({ mode: 0o755, data: Buffer.from('#!/bin/sh\n') });
    expect(byPath.get('usr/bin/tool')!.inode).toBeUndefined();
    expect(entries.map((e) => e.path)).toEqual([...entries.map((e) => e.path)].sort(compareTreePaths));
  });

  it('refuses a missing source, a directory destination and a file parent', async () => {
    const extra = { source, destination: '/x', mode: 0o644, uid: 0, gid: 0 };
    await expect(addFiles(TREE, [{ ...extra, source: join(work, 'nope') }], 1, 'r.yaml')).rejects.toThrow(`cannot read extra file for /x (r.yaml) ${join(work, 'nope')}: ENOENT`);
    await expect(addFiles(TREE, [{ ...extra, destination: '/usr/share' }], 1, 'r.yaml')).rejects.toThrow('/usr/share is a directory in the image');
    const error = await addFiles(TREE, [{ ...extra, destination: '/usr/bin/tool/x' }], 1, 'r.yaml').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain('/usr/bin/tool is a file in the image');
  });
});
