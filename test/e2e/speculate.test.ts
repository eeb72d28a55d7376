/**
 * The fast path end to end: `rampack build` writes shards while the layers
 * unpack; the initramfs is byte for byte the one a build without that writes
 * (layers already unpacked, so nothing is predicted), and it boots on
 * Debian's kernel with the tree the layers make.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import { bootInitramfs } from '../../src/boot/qemu.ts';
import { buildTestAgent, parseTree } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { GENERATED_BASE, GENERATED_PATCH, GENERATED_TOOLCHAIN, generatedContent, walkOrder } from '../helpers/generated-layers.ts';
import { writeOciLayout, type TarEntrySpec } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let agent: string;
let layout: string;

beforeAll(async () => {
  ensureTools(TOOLS.musl, TOOLS.qemuX86);
  work = await mkdtemp(join(tmpdir(), 'rampack-speculate-e2e-'));
  agent = await buildTestAgent('x86_64');
  layout = join(work, 'layout');
  await writeOciLayout(layout, { layers: [{ entries: GENERATED_BASE }, { entries: GENERATED_TOOLCHAIN, compression: 'zstd' }, { entries: GENERATED_PATCH }] }, '1');
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

const OUTPUT = 'spec-1-x86_64.cpio.zst';
const WRITTEN_AHEAD = /(\d+) of the (\d+) shards written ahead were used/;

function build(out: string, cache: string, image = layout) {
  return runRampack([
    'build', '--image', `oci:${image}:1`, '--agent', agent, '--arch', 'x86_64', '--language', 'spec', '--version', '1',
    '--compression', 'zstd', '--shard-size', '64KiB', '--out', out, '--cache', cache, '--verbose',
  ]);
}

/** Builds twice: with shards written while the layers unpack, then from unpacked layers (nothing to predict); returns both runs' stderr. */
async function buildAheadAndAfter(image: string, name: string) {
  const cache = join(work, `cache-${name}`);
  const first = await build(join(work, `out-${name}-ahead`), cache, image);
  expect(first.code, first.stderr).toBe(0);
  // The layers are now unpacked: a build that finds no image part cached writes every shard at the end.
  for (const part of ['rootfs', 'shards', 'outputs']) await rm(join(cache, part), { recursive: true, force: true });
  const second = await build(join(work, `out-${name}-after`), cache, image);
  expect(second.code, second.stderr).toBe(0);
  expect(second.stderr).not.toMatch(WRITTEN_AHEAD);
  const [ahead, after] = await Promise.all(['ahead', 'after'].map((when) => readFile(join(work, `out-${name}-${when}`, OUTPUT))));
  expect(ahead!.equals(after!)).toBe(true);
  return first.stderr;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('rampack build with shards written while layers unpack', () => {
  it('writes the same bytes as without, and the kernel unpacks the tree the layers make', async () => {
    const stderr = await buildAheadAndAfter(layout, 'plain');
    const [, used, written] = WRITTEN_AHEAD.exec(stderr) ?? [];
    expect(Number(written), stderr).toBeGreaterThan(0);
    expect(Number(used)).toBeGreaterThan(0);
    const initrd = join(work, 'out-plain-ahead', OUTPUT);

    const boot = await bootInitramfs({
      arch: 'x86_64',
      kernel: await ensureDebianKernel('x86_64', KERNEL_CACHE),
      initrd,
      agentArgs: ['tree', '/usr'],
      memoryMiB: 256,
      timeoutMs: 120_000,
    });
    expect(boot.timedOut, boot.output).toBe(false);
    const tree = new Map(parseTree(boot.output).map((entry) => [entry.path, entry]));
    expect(tree.get('/usr/bin/f3')?.detail).toBe(sha256(generatedContent(999, 12 * 1024)));
    expect(tree.get('/usr/bin/f2')?.detail).toBe(sha256(generatedContent(102, 12 * 1024)));
    expect(tree.has('/usr/bin/f4')).toBe(false);
    expect(tree.get('/usr/bin/f5-link')?.inode).toBe(tree.get('/usr/bin/f5')?.inode);
    expect([...tree.keys()].filter((path) => path.startsWith('/usr/lib/lang/')).sort()).toEqual(['/usr/lib/lang/current', '/usr/lib/lang/new']);
    expect(tree.get('/usr/lib-extra/f79')?.detail).toBe(sha256(generatedContent(379, 12 * 1024)));
    expect(tree.get('/usr/share/lang/f39')?.detail).toBe(sha256(generatedContent(539, 12 * 1024)));
  }, 240_000);
});

describe('rampack build when a late entry of the last layer breaks the prediction', () => {
  it('rejects the shards written ahead and writes the same bytes as without them', async () => {
    // A big top layer in walk order whose last entry whites out a file of the base layer, far below the frontier.
    const late = join(work, 'late');
    const files = Array.from({ length: 300 }, (_, i): TarEntrySpec => ({ name: `usr/share/late/f${i}`, content: generatedContent(700 + i, 16 * 1024) }));
    const top = [...walkOrder([{ name: 'usr', type: 'directory' }, { name: 'usr/share', type: 'directory' }, { name: 'usr/share/late', type: 'directory' }, ...files]),
      { name: 'usr/bin/.wh.f1', content: '' }];
    await writeOciLayout(late, { layers: [{ entries: GENERATED_BASE }, { entries: GENERATED_TOOLCHAIN }, { entries: top }] }, '1');
    const stderr = await buildAheadAndAfter(late, 'late');
    const [, used, written] = WRITTEN_AHEAD.exec(stderr) ?? [];
    expect(Number(written), stderr).toBeGreaterThan(0);
    expect(Number(used), stderr).toBeLessThan(Number(written));
  }, 240_000);
});
