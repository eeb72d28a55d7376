/**
 * Kernels in the cache count as used when read: `cache prune --older-than`
 * removes a kernel nobody asked for since, and keeps the one `verify --boot`
 * and `rampack slim` just booted (src/boot/kernel.ts touches it).
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import { Cache } from '../../src/cache/cache.ts';
import { cacheEntries, pruneCache } from '../../src/cache/inventory.ts';

const DAY_MS = 24 * 60 * 60 * 1000;

let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-kernel-cache-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A kernel file in the cache, last used `daysAgo` days ago. */
async function cachedKernel(cache: Cache, arch: 'x86_64' | 'aarch64', daysAgo: number): Promise<string> {
  await mkdir(cache.kernelDir(arch), { recursive: true });
  const path = join(cache.kernelDir(arch), 'vmlinuz-6.1.0-test');
  await writeFile(path, `a ${arch} kernel`);
  const then = new Date(Date.now() - daysAgo * DAY_MS);
  await utimes(path, then, then);
  return path;
}

describe('kernels in the cache', () => {
  it('are marked used when read, so a prune by age keeps the kernel in use and removes the one left alone', async () => {
    const cache = new Cache(await mkdtemp(join(work, 'cache-')));
    const used = await cachedKernel(cache, 'x86_64', 60);
    const idle = await cachedKernel(cache, 'aarch64', 60);

    const started = Date.now();
    expect(await ensureDebianKernel('x86_64', cache)).toBe(used);
    expect((await stat(used)).mtimeMs).toBeGreaterThanOrEqual(started - 1000);
    const kernels = (await cacheEntries(cache)).filter((entry) => entry.kind === 'kernel');
    expect(kernels.map((entry) => entry.name).sort()).toEqual(['aarch64', 'x86_64']);

    const { removed } = await pruneCache(cache, { olderThanMs: 30 * DAY_MS });
    expect(removed.map((entry) => `${entry.kind} ${entry.name}`)).toEqual(['kernel aarch64']);
    expect(existsSync(used)).toBe(true);
    expect(existsSync(idle)).toBe(false);
  });
});
