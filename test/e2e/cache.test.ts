/**
 * The cache as `rampack build`, `rampack cache ls` and `rampack cache prune`
 * see it, all run as processes: damaged or foreign records are misses (the
 * build still succeeds, with the same bytes), stale temporaries of dead
 * processes go and live ones stay, and a prune started while a real build
 * pulls from a slow registry waits for it and removes nothing it uses.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startProxy, startRegistry, type RecordingProxy, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let agent: string;
let layout: string;
let registry: RunningRegistry;
let slow: RecordingProxy;
/** Each blob GET through the slow proxy waits this long: the build is still pulling when the prune starts. */
const BLOB_DELAY_MS = 4000;

beforeAll(async () => {
  ensureTools(TOOLS.musl, TOOLS.registry, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-cache-e2e-'));
  agent = await buildTestAgent('x86_64');
  layout = join(work, 'layout');
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  registry = await startRegistry();
  await pushLayout(layout, '1.0', registry.host, 'lang/runtime');
  slow = await startProxy(registry.host, { faults: [{ when: (request) => request.path.includes('/blobs/'), fault: { kind: 'delay', ms: BLOB_DELAY_MS }, times: 1000 }] });
});

afterAll(async () => {
  await slow?.stop();
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function build(image: string, out: string, cache: string, extra: string[] = []) {
  return runRampack(['build', '--image', image, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1.0', '--out', out, '--cache', cache, ...extra]);
}

const OUTPUT = 'lang-1.0-x86_64.cpio.gz';

interface ListedEntry {
  kind: string;
  name: string;
  bytes: number;
  lastUse: string;
}

async function listCache(cache: string): Promise<ListedEntry[]> {
  const listed = await runRampack(['cache', 'ls', '--cache', cache, '--json']);
  expect(listed.code, listed.stderr).toBe(0);
  return (JSON.parse(listed.stdout) as { entries: ListedEntry[] }).entries;
}

describe('rampack cache', () => {
  it('lists what a build left, and treats damaged records as misses that the next build rewrites', async () => {
    const cache = join(work, 'cache-records');
    const first = await build(`oci:${layout}:1.0`, join(work, 'out-1'), cache);
    expect(first.code, first.stderr).toBe(0);
    const entries = await listCache(cache);
    // Blobs of an OCI layout are read where they are: no blob entries.
    expect(new Set(entries.map((entry) => entry.kind))).toEqual(new Set(['layer', 'image-part', 'output']));
    for (const entry of entries) expect(entry.bytes, entry.name).toBeGreaterThan(0);

    // Every record the build reads, replaced by something else: not JSON, JSON of another shape, a path outside the cache.
    for (const name of readdirSync(join(cache, 'layers', 'sha256')).filter((file) => file.endsWith('.json'))) writeFileSync(join(cache, 'layers', 'sha256', name), '{"indexer":');
    for (const name of readdirSync(join(cache, 'rootfs'))) writeFileSync(join(cache, 'rootfs', name), JSON.stringify({ uncompressedBytes: 1, shards: [{ file: '../../etc/passwd', size: 1 }] }));
    for (const name of readdirSync(join(cache, 'outputs'))) writeFileSync(join(cache, 'outputs', name), '[]');
    const second = await build(`oci:${layout}:1.0`, join(work, 'out-2'), cache, ['--verbose']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(/layer index .* is not JSON; treating it as missing/);
    expect(second.stderr).toMatch(/image part record .* is not in the current shape/);
    expect(readFileSync(join(work, 'out-2', OUTPUT)).equals(readFileSync(join(work, 'out-1', OUTPUT)))).toBe(true);
    // Rewritten: a third build takes the image part from the cache again.
    const third = await build(`oci:${layout}:1.0`, join(work, 'out-3'), cache, ['--verbose']);
    expect(third.stderr).toContain('image part from cache');
  });

  it('prunes stale temporaries of dead processes only, then entries by age and size', async () => {
    const cache = join(work, 'cache-prune');
    expect((await build(`oci:${layout}:1.0`, join(work, 'out-prune'), cache)).code).toBe(0);
    const hourAgo = new Date(Date.now() - 3600_000);
    const deadPid = 2 ** 22 + 17; // above pid_max's default: no such process
    const temporaries = {
      deadFile: join(cache, 'blobs', 'sha256', `.abc.${deadPid}.0123abcd.tmp`),
      deadDir: join(cache, `.shards-${deadPid}-AbC123`),
      liveFile: join(cache, 'layers', 'sha256', `.def.${process.pid}.0123abcd.tmp`),
      notOurs: join(cache, 'blobs', 'sha256', '.somebody-elses.tmp'),
    };
    mkdirSync(temporaries.deadDir);
    mkdirSync(join(cache, 'blobs', 'sha256'), { recursive: true });
    for (const [name, path] of Object.entries(temporaries)) {
      if (name !== 'deadDir') writeFileSync(path, 'x');
      utimesSync(path, hourAgo, hourAgo);
    }
    const before = await listCache(cache);

    const nothingOld = await runRampack(['cache', 'prune', '--cache', cache, '--older-than', '1d', '--json']);
    expect(nothingOld.code, nothingOld.stderr).toBe(0);
    const kept = JSON.parse(nothingOld.stdout) as { removed: ListedEntry[]; temporaries: string[] };
    expect(kept.removed).toEqual([]);
    expect(kept.temporaries.sort()).toEqual([temporaries.deadDir, temporaries.deadFile].sort());
    expect(readdirSync(join(cache, 'layers', 'sha256'))).toContain(`.def.${process.pid}.0123abcd.tmp`);
    expect(readdirSync(join(cache, 'blobs', 'sha256'))).toContain('.somebody-elses.tmp');
    expect(await listCache(cache)).toHaveLength(before.length);

    // The least recently used go first: the output record was used last (touched by a rebuild), so it stays longest.
    const total = before.reduce((sum, entry) => sum + entry.bytes, 0);
    const halved = await runRampack(['cache', 'prune', '--cache', cache, '--max-size', `${Math.floor(total / 2)}B`, '--json']);
    expect(halved.code, halved.stderr).toBe(0);
    const after = await listCache(cache);
    expect(after.reduce((sum, entry) => sum + entry.bytes, 0)).toBeLessThanOrEqual(total / 2);
    const oldestKept = Math.min(...after.map((entry) => Date.parse(entry.lastUse)));
    for (const removed of (JSON.parse(halved.stdout) as { removed: ListedEntry[] }).removed) expect(Date.parse(removed.lastUse)).toBeLessThanOrEqual(oldestKept);

    const bad = await runRampack(['cache', 'prune', '--cache', cache, '--older-than', 'yesterday']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--older-than takes a number and a unit');
  });

  it('waits for a build that is running and removes nothing it uses', async () => {
    const cache = join(work, 'cache-concurrent');
    // Something older in the cache, which the prune will remove; and the same build in a cache nobody prunes, to compare with.
    const [old, reference] = await Promise.all([
      build(`oci:${layout}:1.0`, join(work, 'out-old'), cache),
      build(`${slow.host}/lang/runtime:1.0`, join(work, 'out-reference'), join(work, 'cache-reference')),
    ]);
    expect([old.code, reference.code]).toEqual([0, 0]);
    const running = build(`${slow.host}/lang/runtime:1.0`, join(work, 'out-slow'), cache, ['--json']);
    await until(() => readdirSync(join(cache, 'leases')).some((name) => name.endsWith('.json')));
    const pruning = runRampack(['cache', 'prune', '--cache', cache, '--max-size', '0B', '--json']);
    const built = await running;
    expect(built.code, built.stderr).toBe(0);
    const pruned = await pruning;
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(pruned.stderr).toMatch(/waiting for 1 running build\(s\) to finish with the cache/);
    // It pruned after the build: what the build added is gone too, and the build's output is whole.
    expect(JSON.parse(pruned.stdout).remainingBytes).toBe(0);
    expect(await listCache(cache)).toEqual([]);
    expect(readFileSync(join(work, 'out-slow', OUTPUT)).equals(readFileSync(join(work, 'out-reference', OUTPUT)))).toBe(true);
    expect(slow.requests.some((request) => request.path.includes('/blobs/'))).toBe(true);
    expect(readdirSync(join(cache, 'leases'))).toEqual([]);
  });
});

async function until(condition: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await sleep(20);
  }
}
