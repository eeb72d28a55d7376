/** The slim tree transform and the trace file format, on trees made in code and a real dynamic binary from Debian. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Arch } from '../../src/oci/content.ts';
import { slimTree } from '../../src/slim/slim-tree.ts';
import { formatTrace, parseTrace } from '../../src/slim/trace-file.ts';
import { encodeCommands } from '../../src/boot/probe.ts';
import { parseTracerOutput } from '../../src/slim/tracer.ts';
import { sortByTreePath, type TreeEntry } from '../../src/tree/entry.ts';
import { debianPackageRoot } from '../helpers/debian.ts';

const owner = { mode: 0o755, uid: 0, gid: 0, mtime: 0 };
const dir = (path: string): TreeEntry => ({ path, type: 'dir', ...owner });
const file = (path: string, data = `${path}\n`, inode?: number): TreeEntry => ({ path, type: 'file', ...owner, data: Buffer.from(data), ...(inode === undefined ? {} : { inode }) });
const link = (path: string, linkTarget: string): TreeEntry => ({ path, type: 'symlink', ...owner, linkTarget });

function tree(...entries: TreeEntry[]): TreeEntry[] {
  return sortByTreePath(entries);
}

const HOST_ARCH: Arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';

async function keptPaths(entries: TreeEntry[], trace: string[], keep: string[] = []): Promise<string[]> {
  return (await slimTree(entries, { trace, keep, arch: HOST_ARCH })).entries.map((entry) => entry.path);
}

describe('slimTree', () => {
  const base = [dir('usr'), dir('usr/bin'), dir('usr/lib'), dir('proc'), dir('tmp'), dir('opt'), dir('opt/big')];

  it('keeps traced files with their parents and drops the rest, counting the bytes saved', async () => {
    const entries = tree(...base, file('usr/bin/app'), file('usr/bin/unused', 'x'.repeat(1000)), file('opt/big/blob', 'y'.repeat(5000)));
    const result = await slimTree(entries, { trace: ['usr/bin/app', 'not/in/image'], keep: [], arch: HOST_ARCH });
    expect(result.entries.map((entry) => entry.path)).toEqual(['proc', 'tmp', 'usr', 'usr/bin', 'usr/bin/app']);
    expect(result.removed).toBe(entries.length - 5);
    expect(result.bytesSaved).toBe(1000 + 5000);
  });

  it('keeps symlinks on the way and their targets, chained, absolute and relative, inside the root', async () => {
    const entries = tree(
      ...base,
      link('lib', 'usr/lib'),
      file('usr/lib/libx.so.1.2'),
      link('usr/lib/libx.so.1', 'libx.so.1.2'),
      link('usr/lib/libx.so', '/usr/lib/libx.so.1'),
      link('usr/bin/escape', '../../../../usr/lib/libx.so'),
      link('usr/bin/loop1', 'loop2'),
      link('usr/bin/loop2', 'loop1'),
      link('usr/bin/dangling', 'nothing'),
      file('usr/lib/other'),
    );
    const kept = await keptPaths(entries, ['lib/libx.so']);
    expect(kept).toEqual(expect.arrayContaining(['lib', 'usr/lib/libx.so', 'usr/lib/libx.so.1', 'usr/lib/libx.so.1.2', 'usr/bin/escape']));
    expect(kept).not.toContain('usr/lib/other');
    expect(kept).not.toContain('usr/bin/loop1');
    expect(kept).not.toContain('usr/bin/dangling');
  });

  it('keeps hard-link groups whole, device nodes, and keep globs with ! exclusions', async () => {
    const entries = tree(
      ...base,
      file('usr/bin/perl', 'perl', 7),
      file('usr/bin/perl5', 'perl', 7),
      dir('dev'),
      { path: 'dev/null', type: 'char', ...owner, devMajor: 1, devMinor: 3 },
      dir('usr/lib/py'),
      file('usr/lib/py/os.py'),
      dir('usr/lib/py/test'),
      file('usr/lib/py/test/test_os.py'),
      dir('usr/lib/py/json'),
      file('usr/lib/py/json/tool.py'),
    );
    const kept = await keptPaths(entries, ['usr/bin/perl5'], ['usr/lib/py/**', '!usr/lib/py/**/test/**', '!usr/lib/py/test']);
    expect(kept).toEqual(expect.arrayContaining(['usr/bin/perl', 'usr/bin/perl5', 'dev/null', 'usr/lib/py/os.py', 'usr/lib/py/json/tool.py']));
    expect(kept).not.toContain('usr/lib/py/test');
    expect(kept).not.toContain('usr/lib/py/test/test_os.py');
  });

  it("keeps a kept program's ELF interpreter and shared libraries, and a script's interpreter", async () => {
    const root = debianPackageRoot('busybox');
    const busybox = readFileSync(join(root, 'bin', 'busybox'));
    const triple = HOST_ARCH === 'x86_64' ? 'x86_64-linux-gnu' : 'aarch64-linux-gnu';
    const loader = HOST_ARCH === 'x86_64' ? 'ld-linux-x86-64.so.2' : 'ld-linux-aarch64.so.1';
    const loaderDir = HOST_ARCH === 'x86_64' ? 'lib64' : 'lib';
    const entries = tree(
      ...base,
      dir('bin'),
      dir(loaderDir),
      { path: 'bin/busybox', type: 'file', ...owner, data: busybox },
      dir(`lib/${triple}`),
      ...(loaderDir === 'lib' ? [] : [dir('lib')]),
      file(`lib/${triple}/libc.so.6`),
      file(`lib/${triple}/libresolv.so.2`),
      file(`lib/${triple}/libunused.so.1`),
      file(`lib/${triple}/${loader}`),
      link(`${loaderDir}/${loader}`, `/lib/${triple}/${loader}`),
      file('usr/bin/tool', '#!/bin/busybox sh\necho hi\n'),
    );
    const kept = await keptPaths(entries, ['usr/bin/tool']);
    expect(kept).toEqual(expect.arrayContaining(['bin/busybox', `lib/${triple}/libc.so.6`, `lib/${triple}/libresolv.so.2`, `${loaderDir}/${loader}`, `lib/${triple}/${loader}`]));
    expect(kept).not.toContain(`lib/${triple}/libunused.so.1`);
  });
});

describe('trace files', () => {
  it('round-trip sorted, escaped byte-string paths and the image digests', () => {
    const trace = { image: 'oci:x:latest', manifestDigest: 'sha256:aa', configDigest: 'sha256:bb', workload: 'sha256:cc', paths: ['usr/b', 'odd\tname\xff', 'usr/a', 'usr/a'] };
    const text = formatTrace(trace, 'test');
    expect(text).toContain('\n/odd\\x09name\\xff\n');
    expect(parseTrace(text, 't')).toEqual({ ...trace, paths: ['odd\tname\xff', 'usr/a', 'usr/b'] });
  });

  it('refuse a trace without its image digest', () => {
    expect(() => parseTrace('image x\n\n/usr/a\n', 'broken.trace')).toThrow(/broken.trace lacks manifestDigest, configDigest, workload/);
  });
});

describe('tracer commands', () => {
  it('encode each command as its argument count and NUL-terminated arguments', () => {
    expect(encodeCommands([['python3', '--version'], ['sh', '-c', 'a b']]).toString('latin1')).toBe('2\0python3\0--version\x003\0sh\0-c\0a b\0');
  });
});

describe('tracer output', () => {
  const console = [
    '[    1.0] kernel line',
    'RAMPACK-SLIM ready',
    'program output RAMPACK-SLIM-RUN 9 exit=9',
    'RAMPACK-SLIM-RUN 0 exit=0',
    'RAMPACK-SLIM-RUN 1 exit=3',
    'RAMPACK-SLIM-TRACE-BEGIN',
    '/usr/bin/python3.11',
    '/odd\\x09name',
    'RAMPACK-SLIM-TRACE-END',
    'RAMPACK-SLIM done',
    '',
  ].join('\n');

  it('gives exit statuses in order and the unescaped, sorted paths', () => {
    const run = parseTracerOutput(console, 'trace', false);
    expect(run.exits).toEqual([0, 3]);
    expect(run.paths).toEqual(['/odd\tname', '/usr/bin/python3.11']);
    expect(run.error).toBeUndefined();
  });

  it('reads the missing block only in missing mode, and reports the tracer\'s error', () => {
    const missing = 'RAMPACK-SLIM ready\nRAMPACK-SLIM error: fanotify_init: Function not implemented\nRAMPACK-SLIM-MISSING-BEGIN\n/usr/bin/cc\nRAMPACK-SLIM-MISSING-END\n';
    expect(parseTracerOutput(missing, 'missing', false)).toMatchObject({ exits: [], paths: ['/usr/bin/cc'], error: 'fanotify_init: Function not implemented' });
    expect(parseTracerOutput(missing, 'trace', true)).toMatchObject({ paths: [], timedOut: true });
  });
});

