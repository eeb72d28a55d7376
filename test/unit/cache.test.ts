/**
 * The cache module (src/cache): records that are not usable are misses and
 * are logged, prune's choice of entries, the lease protocol between builds
 * and prune, and which temporaries count as the cache's own.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache, isCount, isObject } from '../../src/cache/cache.ts';
import { entriesToRemove, type CacheEntry } from '../../src/cache/inventory.ts';
import { leaseCache, liveLeases, temporaryOwner, withPruneLock } from '../../src/cache/lease.ts';
import { InputError } from '../../src/errors.ts';
import type { Logger } from '../../src/util/log.ts';

let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-cache-unit-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (line) => lines.push(`info ${line}`), warn: (line) => lines.push(`warn ${line}`), debug: (line) => lines.push(`debug ${line}`) };
}

const isSized = (value: unknown): value is { size: number } => isObject(value) && isCount(value.size);

describe('Cache.readRecord', () => {
  it('gives the record when it has the shape, and a logged miss when it is not JSON or not of the shape', async () => {
    const log = recordingLogger();
    const cache = new Cache(await mkdtemp(join(work, 'records-')), log);
    const path = join(cache.root, 'record.json');
    expect(await cache.readRecord(path, isSized, 'test record')).toBeUndefined();
    expect(log.lines).toEqual([]); // missing is an ordinary miss
    await cache.writeRecord(path, { size: 3 });
    expect(await cache.readRecord(path, isSized, 'test record')).toEqual({ size: 3 });
    for (const text of ['{"size":', '{"size":-1}', '[]', 'null', '{"size":"3"}']) {
      await writeFile(path, text);
      expect(await cache.readRecord(path, isSized, 'test record'), text).toBeUndefined();
    }
    expect(log.lines.filter((line) => line.includes('treating it as missing'))).toHaveLength(5);
    expect(log.lines[0]).toMatch(/^warn cache: test record .* is not JSON/);
  });
});

describe('choosing what a prune removes', () => {
  const entry = (name: string, bytes: number, lastUse: number, kind: CacheEntry['kind'] = 'blob'): CacheEntry => ({ kind, name, bytes, lastUse, files: [] });
  const entries = [entry('a', 100, 1), entry('b', 100, 2), entry('orphan', 5, 3, 'shard'), entry('c', 100, 4), entry('d', 100, 5)];
  const names = (removed: CacheEntry[]) => removed.map((e) => e.name).sort();

  it('removes entries last used longer ago than --older-than, and shards no part names', () => {
    expect(names(entriesToRemove(entries, { olderThanMs: 2, now: 5 }))).toEqual(['a', 'b', 'orphan']);
    expect(names(entriesToRemove(entries, {}))).toEqual(['orphan']);
  });

  it('then the least recently used until the rest fits in --max-size', () => {
    expect(names(entriesToRemove(entries, { maxBytes: 250 }))).toEqual(['a', 'b', 'orphan']);
    expect(names(entriesToRemove(entries, { maxBytes: 0 }))).toEqual(['a', 'b', 'c', 'd', 'orphan']);
    expect(names(entriesToRemove(entries, { maxBytes: 1000 }))).toEqual(['orphan']);
  });
});

describe('leases and the prune lock', () => {
  it('a prune waits for a live lease, and runs once it is released', async () => {
    const cache = new Cache(await mkdtemp(join(work, 'lease-')));
    const lease = await leaseCache(cache);
    expect(await liveLeases(cache)).toHaveLength(1);
    let waitedFor: number[] = [];
    const refused = withPruneLock(cache, 300, async () => 'pruned', (builds) => (waitedFor = builds.map((build) => build.pid)));
    await expect(refused).rejects.toThrow(InputError);
    await expect(refused).rejects.toThrow(/1 running build\(s\) use the cache .*nothing was removed/);
    expect(waitedFor).toEqual([process.pid]);
    const pruning = withPruneLock(cache, 10_000, async () => 'pruned', () => {});
    setTimeout(() => void lease.release(), 200);
    expect(await pruning).toBe('pruned');
    expect(await readdir(cache.root)).not.toContain('prune.lock');
  });

  it('a build waits while a prune holds the lock', async () => {
    const cache = new Cache(await mkdtemp(join(work, 'lock-')));
    const events: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const pruning = withPruneLock(cache, 1000, async () => {
      events.push('prune starts');
      await held;
      events.push('prune ends');
    }, () => {});
    while (!events.includes('prune starts')) await new Promise((resolve) => setTimeout(resolve, 10));
    const leasing = leaseCache(cache).then((lease) => (events.push('build leased'), lease));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(events).toEqual(['prune starts']);
    release();
    await pruning;
    await (await leasing).release();
    expect(events).toEqual(['prune starts', 'prune ends', 'build leased']);
  });

  it('ignores and removes the lease of a process that is gone', async () => {
    const cache = new Cache(await mkdtemp(join(work, 'stale-')));
    await mkdir(cache.folder('leases'), { recursive: true });
    const stale = join(cache.folder('leases'), 'dead.json');
    await writeFile(stale, JSON.stringify({ pid: 2 ** 22 + 17, host: hostname(), since: Date.now() }));
    expect(await liveLeases(cache)).toEqual([]);
    expect(await readdir(cache.folder('leases'))).toEqual([]);
    expect(await withPruneLock(cache, 0, async () => 'pruned', () => {})).toBe('pruned');
  });
});

describe('the cache temporaries', () => {
  it('are named with the pid of the process that writes them; other names are not the cache’s', () => {
    expect(temporaryOwner('.0123abcd.tar.4242.deadbeef.tmp')).toBe(4242);
    expect(temporaryOwner('.shards-4242-Ab12Cd')).toBe(4242);
    expect(temporaryOwner('.shards-Ab12Cd')).toBeUndefined();
    expect(temporaryOwner('0123abcd.tar')).toBeUndefined();
    expect(temporaryOwner('.editor-swap.tmp')).toBeUndefined();
  });
});
