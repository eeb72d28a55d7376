/**
 * Shards written ahead while layers unpack (src/build/speculate.ts): real
 * layers unpacked into a real cache, real worker threads. Whatever the
 * prediction, the image part must be byte for byte what it is without one.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageArchive, type ArchiveSettings, type ImageArchive } from '../../src/build/archive.ts';
import { ShardWorkers } from '../../src/build/shard-workers.ts';
import { ShardSpeculator } from '../../src/build/speculate.ts';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import { sha256Digest } from '../../src/util/digest.ts';
import { GENERATED_BASE as BASE, GENERATED_PATCH as PATCH, GENERATED_TOOLCHAIN as TOOLCHAIN } from '../helpers/generated-layers.ts';
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
  return { blob: blobPath, descriptor, diffId: sha256Digest(tar), cacheDir };
}

async function partBytes(part: ImageArchive): Promise<Buffer> {
  return Buffer.concat(await Promise.all(part.parts.map(async (path) => readFile(await path))));
}

/**
 * Unpacks the layers in `order` (indexes, bottom = 0) feeding a speculator,
 * then writes the image part with the shards it wrote ahead; returns that
 * part's bytes, the same part written without speculation, and the stats.
 */
async function buildBothWays(layers: TarEntrySpec[][], order: number[]) {
  const cacheDir = await mkdtemp(join(workDir, 'cache-'));
  const workers = new ShardWorkers(cacheDir);
  const plainWorkers = new ShardWorkers(cacheDir);
  try {
    const speculator = new ShardSpeculator(workers, async (partial) => flattenLayers(partial).entries, settings, layers.length);
    const options = await Promise.all(layers.map((entries, index) => writeLayer(cacheDir, `layer${index}`, entries)));
    const unpacked: UnpackedLayer[] = [];
    for (const index of order) {
      unpacked[index] = await unpackLayer({ ...options[index]!, onProgress: (progress) => speculator.layerProgress(index, progress) });
      speculator.layerDone(index, unpacked[index]!);
    }
    await speculator.idle();
    const { entries } = flattenLayers(unpacked);
    const early = await partBytes(await imageArchive(entries, settings, await mkdtemp(join(workDir, 'rootfs-')), workers, () => {}, speculator));
    const plain = await partBytes(await imageArchive(entries, settings, await mkdtemp(join(workDir, 'rootfs-')), plainWorkers, () => {}));
    return { early, plain, stats: speculator.stats };
  } finally {
    await Promise.all([workers.close(), plainWorkers.close()]);
  }
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
