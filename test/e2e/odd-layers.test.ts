/**
 * `rampack build` on layers other tools write oddly, judged by the peers:
 * sparse files in every format GNU tar and bsdtar write (GNU tar's own
 * extraction is the oracle, byte for byte, old GNU 'S' entries included),
 * and directory trees far deeper than the kernel's PATH_MAX (no stack
 * overflow anywhere; refused with exit 3 naming the path; a tree just under
 * the limit is built and inspected).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { extractWithCpio } from '../helpers/initramfs.ts';
import { type RawEntrySpec, rawTar, writeOciLayout } from '../helpers/oci-builder.ts';
import { SPARSE_FILES, SPARSE_FORMATS, sparseTar } from '../helpers/sparse.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let agent: string;

beforeAll(async () => {
  ensureTools({ command: 'tar', pkg: 'tar' }, TOOLS.bsdtar, TOOLS.cpio, TOOLS.musl);
  work = mkdtempSync(join(tmpdir(), 'rampack-odd-layers-'));
  agent = await buildTestAgent('x86_64');
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Builds an OCI layout of one image with these uncompressed layer tars; returns the CLI's result and output file. */
async function build(name: string, tars: Buffer[]) {
  const layout = join(work, name, 'layout');
  await writeOciLayout(layout, { layers: tars.map((tar) => ({ tar, compression: 'gzip' as const })) }, 'test');
  const out = join(work, name, 'out');
  const result = await runRampack([
    'build', '--image', `oci:${layout}:test`, '--agent', agent, '--arch', 'x86_64', '--language', 'odd', '--version', name,
    '--out', out, '--cache', join(work, 'cache'), '--compression', 'gzip', '--shard-size', '1MiB',
  ]);
  return { result, initramfs: join(out, `odd-${name}-x86_64.cpio.gz`) };
}

describe('sparse files', () => {
  it('builds layers of every sparse format into files equal to what GNU tar extracts', async () => {
    const tars = Object.keys(SPARSE_FORMATS).map((format) => sparseTar(join(work, 'sparse-source'), format));
    const { result, initramfs } = await build('sparse', tars);
    expect(result.code, result.stderr).toBe(0);
    const ours = join(work, 'sparse-ours');
    mkdirSync(ours);
    extractWithCpio(initramfs, ours);
    const theirs = join(work, 'sparse-gnu-tar');
    mkdirSync(theirs);
    for (const tar of tars) execFileSync('tar', ['-xf', '-', '-C', theirs], { input: tar });
    for (const format of Object.keys(SPARSE_FORMATS)) {
      for (const { name, size } of SPARSE_FILES) {
        const expected = readFileSync(join(theirs, format, name));
        expect(expected.length).toBe(size);
        expect(readFileSync(join(ours, format, name)).equals(expected), `${format}/${name}`).toBe(true);
      }
    }
  }, 120_000);
});

describe('deep directory trees', () => {
  /** A layer with `depth` nested one-letter directories (each an entry, PAX paths) and a file at the bottom. */
  function deepLayer(depth: number, explicitDirectories: boolean): Buffer {
    const entries: RawEntrySpec[] = [];
    let path = '';
    for (let level = 0; level < depth; level++) {
      path = path === '' ? 'd' : `${path}/d`;
      if (explicitDirectories) entries.push({ name: path, typeflag: '5', mode: 0o755 });
    }
    entries.push({ name: `${path}/f`, data: Buffer.from('deep') });
    return rawTar(entries);
  }

  it.each([
    [5000, true],
    [20000, false],
  ])('refuses a tree %i levels deep with exit 3 naming the path and the PATH_MAX limit, without a stack overflow', async (depth, explicit) => {
    const { result } = await build(`deep-${depth}`, [deepLayer(depth, explicit)]);
    expect(result.code, result.stderr).toBe(3);
    expect(result.stderr).toMatch(/path "(d\/){20,}d?…(\/d){20,}" is 4097 bytes long: the kernel unpacks at most 4095 \(PATH_MAX\)/);
    expect(result.stderr).not.toMatch(/Maximum call stack|internal error|\n\s+at /);
    expect(result.stderr.split('\n').every((line) => line.length < 1000)).toBe(true);
  }, 180_000);

  it('builds and inspects a tree just under PATH_MAX', async () => {
    const depth = 2046; // "d/d/…/d/f": 4093 bytes
    const { result, initramfs } = await build('deep-ok', [deepLayer(depth, true)]);
    expect(result.code, result.stderr).toBe(0);
    const inspect = await runRampack(['inspect', initramfs, '--json']);
    expect(inspect.code, inspect.stderr).toBe(0);
    const deepest = `/${Array(depth).fill('d').join('/')}/f`;
    const extracted = extractWithCpio(initramfs);
    // Relative to the extraction: with the directory's own path in front, the name would pass PATH_MAX.
    expect(execFileSync('cat', [deepest.slice(1)], { cwd: extracted }).toString()).toBe('deep');
    expect(inspect.stdout).toContain(`"path": "${deepest}"`);
  }, 180_000);
});
