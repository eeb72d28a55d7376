import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { imageArchive } from '../../src/pipeline/image-part.ts';
import { writeInitramfs } from '../../src/pipeline/output.ts';
import { shardEntries, shardJobs, shardKeys, type ArchiveSettings } from '../../src/pipeline/shards.ts';
import { ShardWorkers } from '../../src/pipeline/shard-workers.ts';
import { readNewcArchive } from '../../src/cpio/reader.ts';
import type { TreeEntry } from '../../src/tree/entry.ts';
import { decompressedInitramfs } from '../helpers/initramfs.ts';

const file = (path: string, size: number, inode?: number): TreeEntry => ({
  path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, inode, data: { file: '/cache/layers/sha256/abc.tar', offset: 512, size },
});

describe('sharding the image part', () => {
  it('cuts after about the shard size, keeping the order', () => {
    const entries = Array.from({ length: 10 }, (_, i) => file(`f${i}`, 40));
    const shards = shardEntries(entries, 100);
    expect(shards.map((shard) => shard.map((e) => e.path))).toEqual([['f0', 'f1', 'f2'], ['f3', 'f4', 'f5'], ['f6', 'f7', 'f8'], ['f9']]);
    expect(shards.flat()).toEqual(entries);
  });

  it('starts a file that would take a shard past twice the shard size in a shard of its own', () => {
    const entries = [file('a', 60), file('big', 180), file('c', 30), file('d', 80), file('huge', 500), file('e', 10)];
    const shards = shardEntries(entries, 100);
    expect(shards.map((shard) => shard.map((e) => e.path))).toEqual([['a'], ['big'], ['c', 'd'], ['huge'], ['e']]);
  });

  it('never cuts inside a hard-link group', () => {
    const entries = [file('a', 100, 7), file('b', 100), file('c', 100), file('d', 0, 7), file('e', 100)];
    const shards = shardEntries(entries, 100);
    const shardOf = (path: string) => shards.findIndex((shard) => shard.some((e) => e.path === path));
    expect(shardOf('a')).toBe(shardOf('d'));
    expect(shards.length).toBeGreaterThan(1);
  });

  it('gives one (possibly empty) shard for a small tree', () => {
    expect(shardEntries([], 100)).toEqual([[]]);
    expect(shardEntries([file('x', 1)], 100)).toHaveLength(1);
  });
});

describe('shard keys', () => {
  const settings = { compression: 'gzip' as const };
  const imageArchiveKey = (entries: TreeEntry[], archiveSettings: Parameters<typeof shardKeys>[1]) => shardKeys([entries], archiveSettings)[0];
  const base = [file('a', 10), file('b', 20)];

  it('is stable, and independent of where the cache lives', () => {
    const moved = base.map((e) => ({ ...e, data: { ...(e.data as { offset: number; size: number }), file: '/elsewhere/layers/sha256/abc.tar' } }));
    expect(imageArchiveKey(base, settings)).toBe(imageArchiveKey(moved, settings));
  });

  it('changes with metadata, data, codec, level and the mtime clamp', () => {
    const key = imageArchiveKey(base, settings);
    const others = [
      imageArchiveKey([{ ...base[0]!, mode: 0o600 }, base[1]!], settings),
      imageArchiveKey([{ ...base[0]!, data: { file: '/c/layers/sha256/def.tar', offset: 512, size: 10 } }, base[1]!], settings),
      imageArchiveKey([{ ...base[0]!, data: Buffer.from('x') }, base[1]!], settings),
      imageArchiveKey(base, { compression: 'zstd' }),
      imageArchiveKey(base, { compression: 'gzip', level: 9 }),
      imageArchiveKey(base, { compression: 'gzip', clampMtime: 0 }),
    ];
    expect(new Set([key, ...others]).size).toBe(others.length + 1);
  });

  it('cover the shards before them, so a key names the whole prefix', () => {
    const [first, second] = shardKeys([[base[0]!], [base[1]!]], settings);
    const [, secondAfterChange] = shardKeys([[{ ...base[0]!, mtime: 2 }], [base[1]!]], settings);
    expect(first).not.toBe(second);
    expect(secondAfterChange).not.toBe(second);
  });

  it('see the shape of hard-link groups, not the inode numbers', () => {
    const linked = (inode: number) => [file('a', 10, inode), file('b', 0, inode), file('c', 5, inode + 1)];
    expect(imageArchiveKey(linked(1), settings)).toBe(imageArchiveKey(linked(40), settings));
    expect(imageArchiveKey(linked(1), settings)).not.toBe(imageArchiveKey([file('a', 10, 1), file('b', 0, 2), file('c', 5, 3)], settings));
  });
});

describe('shards and the deflate implementation', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  const entries: TreeEntry[] = [
    { path: 'etc', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1 },
    ...Array.from({ length: 4 }, (_, index): TreeEntry => ({
      path: `etc/file-${index}`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, data: Buffer.from(`line ${index}\n`.repeat(4000)),
    })),
  ];

  it('keys gzip shards by libdeflate or node:zlib, and zstd shards by neither', () => {
    const libdeflate = shardKeys([entries], { compression: 'gzip' });
    const zstd = shardKeys([entries], { compression: 'zstd' });
    vi.stubEnv('RAMPACK_DEFLATE', 'zlib');
    expect(shardKeys([entries], { compression: 'gzip' })).not.toEqual(libdeflate);
    expect(shardKeys([entries], { compression: 'zstd' })).toEqual(zstd);
  });

  it("never serves a part cached by one implementation as the other's", async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'rampack-shards-'));
    const settings: ArchiveSettings = { compression: 'gzip', shardBytes: 16 * 1024 };
    /** A build's initramfs, its image part written by worker threads (which see RAMPACK_DEFLATE as it is now) or taken from the cache. */
    const build = async () => {
      const workers = new ShardWorkers(new Cache(cacheDir));
      try {
        const part = await imageArchive(entries, settings, new Cache(cacheDir), workers, () => {});
        const output = join(cacheDir, 'initramfs.cpio.gz');
        await writeInitramfs(output, part, [], settings, new Cache(cacheDir));
        return { fromCache: part.fromCache, shards: part.parts.length, bytes: await readFile(output) };
      } finally {
        await workers.close();
      }
    };
    try {
      const libdeflate = await build();
      vi.stubEnv('RAMPACK_DEFLATE', 'zlib');
      const zlib = await build();
      expect(libdeflate.shards).toBeGreaterThan(1);
      expect(zlib.fromCache).toBe(false);
      expect(zlib.bytes.equals(libdeflate.bytes)).toBe(false);
      expect(gunzipSync(zlib.bytes).equals(gunzipSync(libdeflate.bytes))).toBe(true);
      expect(await build()).toEqual({ ...zlib, fromCache: true });
      vi.unstubAllEnvs();
      expect(await build()).toEqual({ ...libdeflate, fromCache: true });
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});

describe('a shard holding a file bigger than a worker buffer', () => {
  it('streams through the compressor and reads back byte for byte', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'rampack-shards-'));
    // 40 MiB with no period the compressor could shortcut, plus files on both sides.
    const big = Buffer.alloc(40 * 1024 * 1024);
    for (let at = 0; at < big.length; at += 4) big.writeUInt32LE((at * 2654435761) >>> 0, at);
    const small = (path: string): TreeEntry => ({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, data: Buffer.from(`${path}\n`) });
    const entries: TreeEntry[] = [
      { path: 'opt', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1 },
      small('opt/a'),
      { path: 'opt/big', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1, data: big },
      small('opt/z'),
    ];
    const workers = new ShardWorkers(new Cache(cacheDir));
    try {
      const settings: ArchiveSettings = { compression: 'zstd' };
      const part = await imageArchive(entries, settings, new Cache(cacheDir), workers, () => {});
      const output = join(cacheDir, 'initramfs.cpio.zst');
      await writeInitramfs(output, part, [], settings, new Cache(cacheDir));
      const records = [];
      for await (const record of readNewcArchive(Readable.from([decompressedInitramfs(output)]))) records.push(record);
      expect(records.map((record) => record.name)).toEqual(['opt', 'opt/a', 'opt/big', 'opt/z']);
      expect(records[2]!.data!.equals(big)).toBe(true);
    } finally {
      await workers.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});

describe('shard jobs', () => {
  it('tell each shard the directories before it, even 300000 of them in one shard', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'rampack-shards-'));
    const directory = (path: string): TreeEntry => ({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 1 });
    const many = Array.from({ length: 300_000 }, (_, index) => directory(`d${index}`));
    const workers = new ShardWorkers(new Cache(cacheDir));
    try {
      const jobs = await shardJobs([many, [directory('last')]], ['k1', 'k2'], { compression: 'gzip' }, workers);
      expect(jobs.map((job) => job.presentDirectories.length)).toEqual([0, 300_000]);
    } finally {
      await workers.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});
