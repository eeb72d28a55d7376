/**
 * Shards written ahead while layers unpack (src/pipeline/speculate.ts): real
 * layers unpacked into a real cache, real worker threads. Whatever the
 * prediction, the image part must be byte for byte what it is without one.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageArchive, type ImageArchive } from '../../src/pipeline/image-part.ts';
import type { ArchiveSettings, ShardJob, ShardResult } from '../../src/pipeline/shards.ts';
import { ShardWorkers } from '../../src/pipeline/shard-workers.ts';
import { ShardSpeculator } from '../../src/pipeline/speculate.ts';
import { Cache } from '../../src/cache/cache.ts';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import type { TreeEntry } from '../../src/tree/entry.ts';
import { sha256Digest } from '../../src/util/digest.ts';
import { GENERATED_BASE as BASE, GENERATED_PATCH as PATCH, GENERATED_TOOLCHAIN as TOOLCHAIN, generatedContent, walkOrder } from '../helpers/generated-layers.ts';
import { tarBytes, type TarEntrySpec } from '../helpers/oci-builder.ts';

let workDir: string;
const settings: ArchiveSettings = { compression: 'zstd', shardBytes: 64 * 1024 };

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'rampack-speculate-'));
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

async function writeLayer(cacheDir: string, name: string, entries: TarEntrySpec[]) {
  const tar = await tarBytes(entries);
  const blob = gzipSync(tar);
  const blobPath = join(workDir, `${name}-${Math.random().toString(16).slice(2)}.tar.gz`);
  await writeFile(blobPath, blob);
  const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256Digest(blob), size: blob.length };
  return { blob: blobPath, descriptor, diffId: sha256Digest(tar), cache: new Cache(cacheDir) };
}

async function partBytes(part: ImageArchive): Promise<Buffer> {
  return Buffer.concat(await Promise.all(part.parts.map(async (path) => readFile(await path))));
}

/** Shard workers that remember every job they ran and how it ended: which shards were really written, and where. */
class RecordingWorkers extends ShardWorkers {
  readonly runs: { job: ShardJob; result: Promise<ShardResult> }[] = [];

  override run(job: ShardJob): Promise<ShardResult> {
    const result = super.run(job);
    this.runs.push({ job, result });
    return result;
  }
}

interface Rig {
  /** The layers as blobs in a fresh cache, to unpack. */
  options: Awaited<ReturnType<typeof writeLayer>>[];
  workers: RecordingWorkers;
  speculator: ShardSpeculator;
  /** The image part of `entries` written with the speculator's shards and written plainly, each into a fresh cache. */
  bothWays(entries: readonly TreeEntry[]): Promise<{ early: ImageArchive; earlyBytes: Buffer; plainBytes: Buffer }>;
}

/** Layers, workers and a speculator over them; the workers are closed afterwards. */
async function withSpeculation<T>(layers: TarEntrySpec[][], use: (rig: Rig) => Promise<T>): Promise<T> {
  const cacheDir = await mkdtemp(join(workDir, 'cache-'));
  const workers = new RecordingWorkers(new Cache(cacheDir));
  const plainWorkers = new ShardWorkers(new Cache(cacheDir));
  const freshCache = async () => new Cache(await mkdtemp(join(workDir, 'rootfs-')));
  try {
    const speculator = new ShardSpeculator(workers, async (partial) => flattenLayers(partial).entries, settings, layers.length);
    const options = await Promise.all(layers.map((entries, index) => writeLayer(cacheDir, `layer${index}`, entries)));
    const bothWays = async (entries: readonly TreeEntry[]) => {
      const early = await imageArchive(entries, settings, await freshCache(), workers, () => {}, speculator);
      const earlyBytes = await partBytes(early);
      const plainBytes = await partBytes(await imageArchive(entries, settings, await freshCache(), plainWorkers, () => {}));
      return { early, earlyBytes, plainBytes };
    };
    return await use({ options, workers, speculator, bothWays });
  } finally {
    await Promise.all([workers.close(), plainWorkers.close()]);
  }
}

/**
 * Unpacks the layers in `order` (indexes, bottom = 0) feeding a speculator,
 * then writes the image part with the shards it wrote ahead; returns that
 * part's bytes, the same part written without speculation, and the stats.
 */
function buildBothWays(layers: TarEntrySpec[][], order: number[]) {
  return withSpeculation(layers, async ({ options, speculator, bothWays }) => {
    const unpacked: UnpackedLayer[] = [];
    for (const index of order) {
      unpacked[index] = await unpackLayer({ ...options[index]!, onProgress: (progress) => speculator.layerProgress(index, progress) });
      speculator.layerDone(index, unpacked[index]!);
    }
    await speculator.idle();
    const { earlyBytes, plainBytes } = await bothWays(flattenLayers(unpacked).entries);
    return { early: earlyBytes, plain: plainBytes, stats: speculator.stats };
  });
}

describe('shards written while layers unpack', () => {
  it('are used when the prediction holds, and change no byte of the image part', async () => {
    const { early, plain, stats } = await buildBothWays([BASE, TOOLCHAIN, PATCH], [2, 0, 1]);
    expect(stats.used).toBeGreaterThan(0);
    expect(stats.used).toBeLessThanOrEqual(stats.written);
    expect(early.equals(plain)).toBe(true);
  });

  it('are all used when a layer is in plain bytewise order (as older builders write them)', async () => {
    // Plain order puts usr/lib-extra before usr/lib/...: the frontier must not pass usr/lib/ early.
    const bytewise = [...BASE].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    expect(bytewise.map((e) => e.name)).not.toEqual(BASE.map((e) => e.name));
    const { early, plain, stats } = await buildBothWays([bytewise, TOOLCHAIN, PATCH], [2, 1, 0]);
    expect(early.equals(plain)).toBe(true);
    expect(stats.used).toBeGreaterThan(0);
    expect(stats.used).toBe(stats.written);
  });

  it('change no byte when a layer in another order makes the prediction wrong', async () => {
    // The top layer arrives last and backwards: its whiteouts come after what they remove.
    const { early, plain } = await buildBothWays([BASE, TOOLCHAIN, [...PATCH].reverse()], [0, 1, 2]);
    expect(early.equals(plain)).toBe(true);
  });
});

/**
 * A top layer in walk order up to its last entry, which breaks the order and
 * changes what is below the frontier: a whiteout of a file an earlier layer
 * has (usr/bin/f1) or a file that sorts first (usr/bin/a-late).
 */
const LATE_CHANGES: Record<string, TarEntrySpec> = {
  'a late whiteout': { name: 'usr/bin/.wh.f1', content: '' },
  'a late file out of order': { name: 'usr/bin/a-late', content: generatedContent(77, 5000) },
};

describe('shards written ahead on a prediction that a later entry breaks', () => {
  for (const [what, late] of Object.entries(LATE_CHANGES)) {
    it(`are written, then rejected (${what}), and the image part is byte for byte the plain one`, async () => {
      const top = [...walkOrder([{ name: 'usr', type: 'directory' }, { name: 'usr/share', type: 'directory' }, { name: 'usr/share/late', type: 'directory' },
        ...Array.from({ length: 40 }, (_, i): TarEntrySpec => ({ name: `usr/share/late/f${i}`, content: generatedContent(600 + i, 12 * 1024) }))]), late];
      await withSpeculation([BASE, TOOLCHAIN, top], async ({ options, workers, speculator, bothWays }) => {
        const unpacked = await Promise.all(options.map((layer) => unpackLayer(layer)));
        unpacked.slice(0, 2).forEach((layer, index) => speculator.layerDone(index, layer));
        // The top layer as the speculator sees it while it unpacks: everything but its last entry, all readable.
        const { entries, tarPath } = unpacked[2]!;
        const arrived = entries.slice(0, -1);
        expect(arrived.at(-1)!.path).toBe('usr/share/late/f9'); // walk order: f10..f19 come before f2, f39 last but one
        speculator.layerProgress(2, { entries: arrived, tarPath, partialPath: `${tarPath}.gone`, readableBytes: (await stat(tarPath)).size });
        await speculator.idle();
        const ahead = await Promise.all(workers.runs.map(async ({ job, result }) => ({ job, result: await result })));
        const writtenAhead = ahead.filter(({ result }) => !result.error);
        expect(writtenAhead.length).toBeGreaterThan(0);
        for (const { job } of writtenAhead) expect((await stat(job.output)).size).toBeGreaterThan(0);

        // The last entry arrives and breaks the prediction.
        speculator.layerDone(2, unpacked[2]!);
        const { early, earlyBytes, plainBytes } = await bothWays(flattenLayers(unpacked).entries);
        expect(earlyBytes.equals(plainBytes)).toBe(true);

        const used = new Set(await Promise.all(early.parts));
        const rejected = writtenAhead.filter(({ job }) => !used.has(job.output));
        expect(rejected.length).toBeGreaterThan(0);
        expect(speculator.stats.written).toBe(writtenAhead.length);
        expect(speculator.stats.used).toBe(writtenAhead.length - rejected.length);
      });
    });
  }
});
