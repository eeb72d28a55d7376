/**
 * unpackLayer fed an incoming blob (one still downloading) instead of a
 * file: the same layer comes out, a download that started over falls back to
 * the complete file, and damage is reported as it is for a file.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout } from 'node:timers/promises';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { DownloadRestartedError, InputError, VerificationError } from '../../src/errors.ts';
import type { IncomingBlob } from '../../src/oci/content.ts';
import { unpackLayer, type UnpackLayerOptions } from '../../src/layers/unpack.ts';
import { sha256Digest } from '../../src/util/digest.ts';
import { tarBytes, type TarEntrySpec } from '../helpers/oci-builder.ts';

let work: string;
let files = 0;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-unpack-incoming-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const entries: TarEntrySpec[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/hostname', content: 'box\n' },
  { name: 'bin/big', content: Buffer.from('0123456789abcdef'.repeat(40_000)) },
];

/** A layer blob on disk, and unpackLayer's options for it (blob: the file) in a fresh cache. */
async function layerFile(encode: (tar: Buffer) => Buffer, damage: (blob: Buffer) => Buffer = (blob) => blob) {
  const tar = await tarBytes(entries);
  const bytes = damage(encode(tar));
  const path = join(work, `blob-${files++}`);
  await writeFile(path, bytes);
  const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256Digest(bytes), size: bytes.length };
  const options: UnpackLayerOptions = { blob: path, descriptor, diffId: sha256Digest(tar), cache: new Cache(await mkdtemp(join(work, 'cache-'))) };
  return { bytes, path, options };
}

/**
 * The bytes arriving in small pieces (the first shorter than a codec's
 * magic), then `end`: by default the download's verdict, as a download's
 * stream ends only once the blob is verified.
 */
function incoming(bytes: Buffer, path: Promise<string>, end: () => Promise<unknown> = () => path): IncomingBlob {
  return {
    path,
    async *follow() {
      yield bytes.subarray(0, 3);
      for (let offset = 3; offset < bytes.length; offset += 7_000) yield bytes.subarray(offset, offset + 7_000);
      await end();
    },
  };
}

async function layerCacheFiles(options: UnpackLayerOptions): Promise<string[]> {
  return readdir(options.cache.folder('layers')).catch(() => []);
}

describe('unpacking a layer as it arrives', () => {
  for (const [codec, encode] of [['gzip', gzipSync], ['zstd', zstdCompressSync], ['no compression', (tar: Buffer) => tar]] as const) {
    it(`gives the same layer as its file (${codec})`, async () => {
      const { bytes, path, options } = await layerFile(encode);
      const fromFile = await unpackLayer(options);
      const arriving = { ...options, cache: new Cache(await mkdtemp(join(work, 'cache-'))) };
      const followed = await unpackLayer({ ...arriving, blob: incoming(bytes, Promise.resolve(path)) });
      expect(followed.entries).toEqual(fromFile.entries);
      expect((await readFile(followed.tarPath)).equals(await readFile(fromFile.tarPath))).toBe(true);
    });
  }

  it('unpacks the complete file when the download started over after bytes were read', async () => {
    const { bytes, path, options } = await layerFile(gzipSync);
    const restarted = () => Promise.reject(new DownloadRestartedError('the download started over'));
    const fromFile = await unpackLayer({ ...options, cache: new Cache(await mkdtemp(join(work, 'cache-'))) });
    const unpacked = await unpackLayer({ ...options, blob: incoming(bytes.subarray(0, bytes.length / 2), Promise.resolve(path), restarted) });
    expect(unpacked.entries).toEqual(fromFile.entries);
    expect((await readFile(unpacked.tarPath)).equals(await readFile(fromFile.tarPath))).toBe(true);
  });

  it("reports a damaged download with the download's own error once it is complete", async () => {
    const { bytes, options } = await layerFile(gzipSync);
    const damaged = Buffer.concat([bytes.subarray(0, 30), Buffer.alloc(40, 7), bytes.subarray(70)]);
    const rejected = new VerificationError(`blob ${options.descriptor.digest} does not match its digest`);
    const download = setTimeout(50).then(() => Promise.reject(rejected));
    const error = await unpackLayer({ ...options, blob: incoming(damaged, download) }).catch((caught: unknown) => caught);
    expect(error).toBe(rejected);
    expect(await layerCacheFiles(options)).toEqual([]);
  });

  it('reports a blob that matches its digest but cannot be decompressed as a corrupt layer', async () => {
    const { bytes, path, options } = await layerFile(gzipSync, (blob) => Buffer.concat([blob.subarray(0, 30), Buffer.alloc(40, 7), blob.subarray(70)]));
    let complete = false;
    const download = setTimeout(50).then(() => {
      complete = true;
      return path;
    });
    const error = await unpackLayer({ ...options, blob: incoming(bytes, download) }).catch((caught: unknown) => caught);
    expect(complete).toBe(true);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toMatch(new RegExp(`^layer ${options.descriptor.digest} is corrupt`));
    expect(await layerCacheFiles(options)).toEqual([]);
  });
});
