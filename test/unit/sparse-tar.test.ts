/**
 * Sparse files in layers (GNU tar --sparse, bsdtar --read-sparse): read in
 * every format the peers write, carried through the layer cache, flatten and
 * the newc writer with the holes as zeros and bounded memory, and refused
 * with a clear InputError when the map is malformed.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { readNewcArchive } from '../../src/cpio/reader.ts';
import { InputError } from '../../src/errors.ts';
import { newcArchive, planNewcArchive } from '../../src/cpio/writer.ts';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { MAX_SPARSE_RUNS, TarIndexer, type LayerEntry } from '../../src/tar/tar-index.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import { rangePieces } from '../../src/tree/entry.ts';
import { sha256Digest } from '../../src/util/digest.ts';
import { generatedContent } from '../helpers/generated-layers.ts';
import { padBlock, paxBody, TAR_END, tarHeader } from '../helpers/oci-builder.ts';
import { SPARSE_FILES, SPARSE_FORMATS, sparseContents, sparseTar, writeSparseFile } from '../helpers/sparse.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const GNU_TAR = { command: 'tar', pkg: 'tar' };
const GIB = 1024 ** 3;

let work: string;

beforeAll(async () => {
  ensureTools(GNU_TAR, TOOLS.bsdtar, TOOLS.cpio);
  work = await mkdtemp(join(tmpdir(), 'rampack-sparse-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function indexTar(tar: Buffer, chunkSize = tar.length): LayerEntry[] {
  const indexer = new TarIndexer('layer test');
  for (let at = 0; at < tar.length; at += chunkSize) indexer.write(tar.subarray(at, at + chunkSize));
  return indexer.end();
}

/** An entry's contents read from the tar bytes through its sparse map. */
function contentsOf(tar: Buffer, entry: LayerEntry): Buffer {
  const range = { file: 'in memory', offset: entry.dataOffset, size: entry.size, sparse: entry.sparse };
  const pieces = [...rangePieces(range, 0, entry.size)];
  return Buffer.concat(pieces.map((piece) => ('zeros' in piece ? Buffer.alloc(piece.zeros) : tar.subarray(piece.position, piece.position + piece.length))));
}

/** Unpacks an uncompressed layer tar through the layer cache, as a build does. */
async function unpackTar(tar: Buffer, name: string): Promise<UnpackedLayer> {
  const blob = join(work, `${name}.blob`);
  await writeFile(blob, tar);
  const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256Digest(tar), size: tar.length };
  return unpackLayer({ blob, descriptor, diffId: sha256Digest(tar), cache: new Cache(join(work, 'cache')) });
}

describe('sparse files written by GNU tar and bsdtar', () => {
  it.each(Object.keys(SPARSE_FORMATS))('%s: indexed with the holes as zeros, whatever the chunking', (format) => {
    const tar = sparseTar(join(work, 'index'), format);
    for (const chunkSize of [tar.length, 511, 4096 + 3]) {
      const entries = new Map(indexTar(tar, chunkSize).map((entry) => [entry.path, entry]));
      for (const spec of SPARSE_FILES) {
        const entry = entries.get(`${format}/${spec.name}`)!;
        expect(entry, spec.name).toMatchObject({ type: 'file', size: spec.size });
        expect(entry.sparse, spec.name).toBeDefined();
        expect(contentsOf(tar, entry).equals(sparseContents(spec)), spec.name).toBe(true);
      }
      // The archive stores the data runs only: the test really reads sparse entries.
      expect(entries.get(`${format}/many-runs`)!.sparse!.length).toBeGreaterThanOrEqual(40);
    }
  });

  it('go through the layer cache, flatten and the newc writer; GNU cpio extracts the same files', async () => {
    const layers: UnpackedLayer[] = [];
    for (const format of Object.keys(SPARSE_FORMATS)) layers.push(await unpackTar(sparseTar(join(work, 'flatten'), format), format));
    // Served from the cache a second time, the maps are the same.
    const cached = await unpackTar(sparseTar(join(work, 'flatten-again'), 'pax-1.0'), 'pax-1.0');
    expect(cached.entries).toEqual(layers[3]!.entries);
    const { entries, warnings } = flattenLayers(layers);
    expect(warnings).toEqual([]);
    const archive = join(work, 'sparse.cpio');
    await pipeline(newcArchive(entries), createWriteStream(archive));
    const extracted = join(work, 'extracted');
    await mkdir(extracted);
    execFileSync('sh', ['-c', 'cpio -idm --quiet < "$1"', 'sh', archive], { cwd: extracted });
    for (const format of Object.keys(SPARSE_FORMATS)) {
      for (const spec of SPARSE_FILES) {
        expect((await readFile(join(extracted, format, spec.name))).equals(sparseContents(spec)), `${format}/${spec.name}`).toBe(true);
      }
    }
    // Filled into one buffer, or into a small reused one piece by piece: the same bytes as streamed.
    const plan = planNewcArchive(entries);
    const whole = Buffer.alloc(plan.size);
    plan.writeInto(whole);
    const streamed = await readFile(archive);
    expect(whole.equals(streamed)).toBe(true);
    const pieces: Buffer[] = [];
    for (const piece of plan.chunks(Buffer.alloc(4096 + 12))) pieces.push(Buffer.from(piece)); // a view, valid until the next
    expect(Buffer.concat(pieces).equals(streamed)).toBe(true);
  });

  it('a 10 GiB file with 3 KiB of data is indexed and flattened without reading its holes; newc refuses it as 4 GiB or more', async () => {
    const source = join(work, 'huge');
    await mkdir(source);
    writeSparseFile(join(source, 'disk.img'), { name: 'disk.img', size: 10 * GIB, runs: [{ offset: 5 * GIB, length: 3 * 1024 }] });
    const tar = execFileSync('tar', ['--format=posix', '--sparse', '-C', source, '-cf', '-', 'disk.img']);
    expect(tar.length).toBeLessThan(64 * 1024);
    const layer = await unpackTar(tar, 'huge');
    const [entry] = flattenLayers([layer]).entries;
    // GNU tar stores whole 4 KiB blocks of data.
    expect(entry).toMatchObject({ path: 'disk.img', data: { size: 10 * GIB, sparse: [{ offset: 5 * GIB, size: 4096 }] } });
    expect(() => newcArchive([entry!])).toThrow(/file "disk.img" is 10737418240 bytes: newc cannot hold a file of 4 GiB or more/);
  });

  it('a 2 GiB sparse file streams through the newc writer in bounded memory, holes as zeros', async () => {
    const source = join(work, 'big');
    await mkdir(source);
    const spec = { name: 'big.img', size: 2 * GIB + 5, runs: [{ offset: 4096, length: 3000 }, { offset: 2 * GIB, length: 5 }] };
    writeSparseFile(join(source, spec.name), spec);
    const tar = execFileSync('tar', ['--format=gnu', '--sparse', '-C', source, '-cf', '-', spec.name]);
    const entries = flattenLayers([await unpackTar(tar, 'big')]).entries;
    // The expected digest, from the spec alone: zeros and the runs' data (writeSparseFile's generated content).
    const expected = createHash('sha256');
    const zeros = Buffer.alloc(1 << 20);
    let at = 0;
    spec.runs.forEach(({ offset, length }, index) => {
      for (; at < offset; at += Math.min(zeros.length, offset - at)) expected.update(zeros.subarray(0, Math.min(zeros.length, offset - at)));
      expected.update(generatedContent(index + 1, length));
      at += length;
    });
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sample = () => (peak = Math.max(peak, process.memoryUsage().rss));
    const records = readNewcArchive(
      (async function* () {
        let count = 0;
        for await (const chunk of newcArchive(entries) as AsyncIterable<Buffer>) {
          if (++count % 64 === 0) sample();
          yield chunk;
        }
      })(),
      { data: 'sha256' },
    );
    const all = [];
    for await (const record of records) all.push(record);
    const [record] = all;
    expect(record).toMatchObject({ name: 'big.img', size: spec.size, sha256: expected.digest('hex') });
    expect(peak - baseline).toBeLessThan(256 * 1024 * 1024);
  }, 120_000);
});

/** A PAX sparse entry ('x' header with `records`, then the file header) with `stored` bytes of data. */
function paxSparseTar(records: Record<string, string>, stored: Buffer): Buffer {
  const body = paxBody(records);
  return Buffer.concat([
    tarHeader({ name: 'PaxHeader/f', typeflag: 'x', size: body.length }),
    padBlock(body),
    tarHeader({ name: 'GNUSparseFile.0/f', size: stored.length }),
    padBlock(stored),
    TAR_END,
  ]);
}

const map01 = (map: string, realSize = 100, extra: Record<string, string> = {}) => ({
  'GNU.sparse.major': '0',
  'GNU.sparse.minor': '1',
  'GNU.sparse.name': 'f',
  'GNU.sparse.size': String(realSize),
  'GNU.sparse.map': map,
  ...extra,
});

/** An old GNU sparse header ('S') with map entries [offset, size] (at most 4), then the stored data. */
function oldGnuSparseTar(entries: [number, number][], realSize: number, stored: Buffer, extended = false): Buffer {
  const header = tarHeader({ name: 'f', typeflag: 'S', size: stored.length, magic: 'ustar  \0' });
  entries.forEach(([offset, size], index) => {
    header.write(`${offset.toString(8).padStart(11, '0')}\0`, 386 + index * 24, 'latin1');
    header.write(`${size.toString(8).padStart(11, '0')}\0`, 398 + index * 24, 'latin1');
  });
  header[482] = extended ? 1 : 0;
  header.write(`${realSize.toString(8).padStart(11, '0')}\0`, 483, 'latin1');
  header.fill(0x20, 148, 156);
  const sum = header.reduce((total, byte) => total + byte, 0);
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return Buffer.concat([header, padBlock(stored), TAR_END]);
}

describe('malformed sparse maps', () => {
  const data = (size: number) => Buffer.alloc(size, 0x61);
  const cases: [string, Buffer, RegExp][] = [
    ['overlapping runs', paxSparseTar(map01('0,10,5,10'), data(20)), /run at offset 5 starts before the previous run ends \(10\)/],
    ['runs out of order', paxSparseTar(map01('50,10,0,10'), data(20)), /run at offset 0 starts before the previous run ends \(60\)/],
    ['a run beyond the size', paxSparseTar(map01('0,10,95,10'), data(20)), /runs to byte 105, past the file's size of 100 bytes/],
    ['less data mapped than stored', paxSparseTar(map01('0,10'), data(20)), /covers 10 bytes, but the tar stores 20 bytes/],
    ['more data mapped than stored', paxSparseTar(map01('0,30'), data(20)), /covers 30 bytes, but the tar stores 20 bytes/],
    ['a number that is not one', paxSparseTar(map01('0,1x'), data(1)), /holds "1x" where a decimal number was expected/],
    ['a number too large', paxSparseTar(map01('0,99999999999999999999'), data(1)), /holds "99999999999999999999"/],
    ['an offset without a length', paxSparseTar(map01('0,10,20'), data(10)), /an offset without a length/],
    ['a wrong run count', paxSparseTar(map01('0,10', 100, { 'GNU.sparse.numblocks': '3' }), data(10)), /numblocks says 3 but the map has 1 runs/],
    [
      'more runs than allowed',
      paxSparseTar(map01(Array(2 * MAX_SPARSE_RUNS + 2).fill('0').join(','), 100), data(0)),
      new RegExp(`more than the ${MAX_SPARSE_RUNS} runs allowed`),
    ],
    ['an unknown version', paxSparseTar({ ...map01('0,10'), 'GNU.sparse.major': '2', 'GNU.sparse.minor': '0' }, data(10)), /sparse format version 2.0 is unknown/],
    ['a NUL in the name', paxSparseTar({ ...map01('0,10'), 'GNU.sparse.name': 'f\0evil' }, data(10)), /GNU.sparse.name holds a NUL byte \("f\\u0000evil"\)/],
    ['no size', paxSparseTar({ 'GNU.sparse.name': 'f', 'GNU.sparse.map': '0,10' }, data(10)), /no GNU.sparse.size or GNU.sparse.realsize/],
    ['no map', paxSparseTar({ 'GNU.sparse.name': 'f', 'GNU.sparse.size': '10' }, data(10)), /has GNU.sparse records but no sparse map/],
    [
      'PAX 0.0 records out of turn',
      paxSparseTar({ 'GNU.sparse.size': '100', 'GNU.sparse.numbytes': '10', path: 'f' }, data(10)),
      /GNU.sparse.numbytes=10 where GNU.sparse.offset was expected/,
    ],
    [
      'a 1.0 map with a huge run count',
      paxSparseTar({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'f', 'GNU.sparse.realsize': '10' }, padBlock(Buffer.from('99999999999\n'))),
      /has 99999999999 runs, more than the/,
    ],
    [
      'a 1.0 map longer than the data',
      paxSparseTar({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'f', 'GNU.sparse.realsize': '10' }, Buffer.from('3\n0\n1\n2\n')),
      /sparse map runs past the end of its data/,
    ],
    [
      'a 1.0 map with a stray byte',
      paxSparseTar({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'f', 'GNU.sparse.realsize': '10' }, padBlock(Buffer.from('1\n0\n1x\n'))),
      /holds "x" where a decimal number was expected/,
    ],
    ['old GNU overlapping runs', oldGnuSparseTar([[0, 10], [5, 10]], 100, data(20)), /run at offset 5 starts before the previous run ends/],
    ['old GNU runs beyond the size', oldGnuSparseTar([[0, 10], [200, 10]], 100, data(20)), /runs to byte 210, past the file's size of 100/],
  ];

  it.each(cases)('refuses %s with an InputError naming the layer and the file', (_name, tar, problem) => {
    for (const chunkSize of [tar.length, 100]) {
      let error: unknown;
      try {
        indexTar(tar, chunkSize);
      } catch (thrown) {
        error = thrown;
      }
      expect(error).toBeInstanceOf(InputError);
      expect((error as InputError).message).toMatch(/^layer test: sparse file "(GNUSparseFile\.0\/)?f" cannot be read: /);
      expect((error as InputError).message).toMatch(problem);
    }
  });

  it('refuses a tar that ends inside a sparse map as truncated', () => {
    const longMap = Buffer.from(`1000\n${'0\n'.repeat(600)}`.slice(0, 1024));
    const oneZeroThree = paxSparseTar({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'f', 'GNU.sparse.realsize': '10' }, longMap);
    expect(() => indexTar(oneZeroThree.subarray(0, 2048))).toThrow(/layer test is truncated/);
    const extension = oldGnuSparseTar([[0, 10]], 100, data(10), true);
    expect(() => indexTar(extension.subarray(0, 512))).toThrow(/layer test is truncated/);
  });
});
