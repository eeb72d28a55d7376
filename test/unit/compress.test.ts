import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  COMPRESSIONS,
  compressBuffer,
  compressorIdentity,
  createCompressor,
  createDecompressor,
  describeCompressor,
  detectCompression,
  fileExtension,
  type Compression,
} from '../../src/compress/index.ts';
import type { NativeDeflate } from '../../src/compress/native-deflate.ts';
import { InputError } from '../../src/errors.ts';
import { ReusedBuffer } from '../../src/util/reused-buffer.ts';
import { REPO_ROOT } from '../helpers/cli.ts';
import { ensureNativeAddons } from '../helpers/native.ts';
import { seededRandom } from '../helpers/random.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const TOOL_COMMAND = { gzip: 'gzip', zstd: 'zstd' } as const;
const EIGHT_MIB = 8 * 1024 * 1024;

let work: string;
/** Text of random words (compressible, but not trivially) with incompressible stretches. */
const words = ['initramfs', 'kernel', 'layer', 'digest', 'cpio', 'zstd', 'gzip', 'agent', '/init', 'rootfs', '\n'];
/** Seeded, so that a result (a size comparison above all) is the same on every run and a failure replays. */
const next = seededRandom(7);
const seededBytes = (length: number) => Buffer.from(Array.from({ length }, () => Math.floor(next() * 256)));
const input = Buffer.concat(
  Array.from({ length: 8 }, () => [
    Buffer.from(Array.from(seededBytes(20_000), (byte) => words[byte % words.length]).join(' ')),
    seededBytes(10_000),
  ]).flat(),
);

async function through(transform: NodeJS.ReadWriteStream, data: Buffer): Promise<Buffer> {
  const chunks = Array.from({ length: Math.ceil(data.length / 65536) }, (_, index) =>
    data.subarray(index * 65536, (index + 1) * 65536),
  );
  return buffer(Readable.from(chunks).pipe(transform));
}

function tool(compression: 'gzip' | 'zstd', args: string[], data: Buffer): Buffer {
  return execFileSync(TOOL_COMMAND[compression], args, { input: data, maxBuffer: 64 * 1024 * 1024 });
}

let addon: NativeDeflate;

beforeAll(async () => {
  ensureTools(TOOLS.zstd, TOOLS.gzip);
  addon = ensureNativeAddons().deflate;
  work = await mkdtemp(join(tmpdir(), 'rampack-compress-'));
});

afterEach(() => {
  vi.unstubAllEnvs();
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe.each(['gzip', 'zstd'] as const)('%s', (compression) => {
  it('is decoded by the Debian tool', async () => {
    const compressed = await through(createCompressor(compression), input);
    expect(detectCompression(compressed)).toBe(compression);
    expect(tool(compression, ['-dc'], compressed).equals(input)).toBe(true);
  });

  it('decodes what the Debian tool made', async () => {
    const compressed = tool(compression, ['-c'], input);
    expect((await through(createDecompressor(compression), compressed)).equals(input)).toBe(true);
  });

  it('decodes back-to-back members (ours, then the tool) as one stream', async () => {
    const ours = await through(createCompressor(compression), input.subarray(0, 50_000));
    const theirs = tool(compression, ['-c'], input.subarray(50_000));
    const decoded = await through(createDecompressor(compression), Buffer.concat([ours, theirs]));
    expect(decoded.equals(input)).toBe(true);
  });

  it('fails on input cut inside a member', async () => {
    const compressed = tool(compression, ['-c'], input);
    await expect(through(createDecompressor(compression), compressed.subarray(0, compressed.length - 10))).rejects.toThrow();
  });

  it('produces the same bytes for the same input', async () => {
    const first = await through(createCompressor(compression), input);
    const second = await through(createCompressor(compression), input);
    expect(second.equals(first)).toBe(true);
  });
});

describe('gzip', () => {
  it('writes a plain header: deflate, no flags (no FNAME, FEXTRA, FCOMMENT or FHCRC), no mtime', async () => {
    const compressed = await through(createCompressor('gzip'), input);
    expect([...compressed.subarray(0, 8)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
  });

});

/** Decoded by Debian's gzip (checked with -t first) and by node:zlib, which must agree with `data`. */
function expectGunzips(compressed: Buffer, data: Buffer): void {
  tool('gzip', ['-t'], compressed);
  expect(tool('gzip', ['-dc'], compressed).equals(data)).toBe(true);
  expect(gunzipSync(compressed).equals(data)).toBe(true);
}

describe('gzip of whole buffers through libdeflate', () => {
  const inputs: [string, Buffer][] = [
    ['empty input', Buffer.alloc(0)],
    ['1 byte', Buffer.from('x')],
    ['random data', randomBytes(300_000)],
    ['compressible data', input],
    ['more than 16 MiB', Buffer.concat([...Array.from({ length: 16 }, () => input), randomBytes(512 * 1024)])],
  ];

  it('has an input of more than 16 MiB', () => {
    expect(inputs.at(-1)![1].length).toBeGreaterThan(16 * 1024 * 1024);
  });

  it.each(inputs)('%s round-trips through Debian gzip and node:zlib', (_, data) => {
    const compressed = compressBuffer('gzip', data);
    expect(compressed.equals(gzipSync(data))).toBe(false); // libdeflate's, not zlib's
    expectGunzips(compressed, data);
  });

  it.each(Array.from({ length: 9 }, (_, index) => index + 1))('level %i round-trips', (level) => {
    expectGunzips(compressBuffer('gzip', input, level), input);
  });

  it('writes a plain header the kernel reads: deflate, no flags, no mtime', () => {
    expect([...compressBuffer('gzip', input).subarray(0, 8)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
  });

  it('compresses source text as well as node:zlib at the same level (within 1%), better than level 1, the same bytes every time', async () => {
    // What initramfs images are full of: text and code. libdeflate and zlib trade places by a fraction of a percent.
    const sources = await Promise.all(readdirSync(join(REPO_ROOT, 'src'), { recursive: true, encoding: 'utf8' })
      .filter((name) => name.endsWith('.ts')).sort().map((name) => readFile(join(REPO_ROOT, 'src', name))));
    const text = Buffer.concat(sources);
    const once = compressBuffer('gzip', text);
    expect(once.length).toBeLessThan(gzipSync(text, { level: 6 }).length * 1.01);
    expect(once.length).toBeLessThan(compressBuffer('gzip', text, 1).length);
    expect(compressBuffer('gzip', text).equals(once)).toBe(true);
  });

  it('writes into the output buffer it is given, allocating nothing when it is big enough', () => {
    const output = new ReusedBuffer();
    const first = compressBuffer('gzip', input, 6, output);
    const second = compressBuffer('gzip', input.subarray(1000), 6, output);
    expect(second.buffer).toBe(first.buffer);
    expectGunzips(second, input.subarray(1000));
  });

  it('is named in the shard identity and the log', () => {
    expect(compressorIdentity('gzip')).toBe(`libdeflate ${addon.version()} (whole shards), zlib ${process.versions.zlib} (streamed)`);
    expect(addon.version()).toMatch(/^\d+\.\d+$/);
    expect(describeCompressor('gzip')).toBe(`compressing with ${compressorIdentity('gzip')}`);
    expect(describeCompressor('zstd')).toBe(`compressing with zstd ${process.versions.zstd}`);
  });

  const big = Buffer.alloc(2 * input.length);

  it.each([
    ['a string as input', () => addon.gzipInto('text' as unknown as Uint8Array, Buffer.alloc(100), 6), TypeError, /input must be a Uint8Array/],
    ['a Uint16Array as output', () => addon.gzipInto(input, new Uint16Array(100) as unknown as Uint8Array, 6), TypeError, /output must be a Uint8Array/],
    ['a missing level', () => (addon.gzipInto as (...args: unknown[]) => number)(input, Buffer.alloc(100)), TypeError, /expected 3 arguments, got 2/],
    ['level 0', () => addon.gzipInto(input, big, 0), RangeError, /level must be an integer from 1 to 12 \(got 0\)/],
    ['level 13', () => addon.gzipInto(input, big, 13), RangeError, /level must be an integer from 1 to 12/],
    ['level 2.5', () => addon.gzipInto(input, big, 2.5), RangeError, /level must be an integer/],
    ['level "6"', () => addon.gzipInto(input, big, '6' as unknown as number), TypeError, /level must be a number/],
    ['a negative length', () => addon.gzipBound(-1), RangeError, /length must be an integer from 0/],
    ['a length of 2^53', () => addon.gzipBound(2 ** 53), RangeError, /length must be an integer/],
    ['an output too small', () => addon.gzipInto(input, Buffer.alloc(100), 6), RangeError, /output is too small: allocate gzipBound/],
    ['output sharing memory with input', () => addon.gzipInto(input.subarray(0, 1000), input.subarray(500, 5000), 6), RangeError, /must not share memory/],
  ] as const)('the addon refuses %s', (_, call, type, message) => {
    expect(call).toThrow(type);
    expect(call).toThrow(message);
  });
});

describe('gzip with RAMPACK_DEFLATE=zlib', () => {
  it("writes node:zlib's bytes, which round-trip, under zlib's identity", () => {
    vi.stubEnv('RAMPACK_DEFLATE', 'zlib');
    const compressed = compressBuffer('gzip', input, 9);
    expect(compressed.equals(gzipSync(input, { level: 9 }))).toBe(true);
    expectGunzips(compressed, input);
    expect(compressorIdentity('gzip')).toBe(`zlib ${process.versions.zlib}`);
    expect(describeCompressor('gzip')).toBe(`compressing with zlib ${process.versions.zlib} (RAMPACK_DEFLATE=zlib)`);
  });

  it('refuses any other value with an InputError that says what to set', () => {
    vi.stubEnv('RAMPACK_DEFLATE', 'libz');
    expect(() => compressorIdentity('gzip')).toThrow(InputError);
    expect(() => compressBuffer('gzip', input)).toThrow(/RAMPACK_DEFLATE=libz is not understood/);
    expect(compressorIdentity('zstd')).toBe(`zstd ${process.versions.zstd}`);
  });
});

describe('zstd', () => {
  it('decodes many frames, skippable and empty ones included, fed byte by byte', async () => {
    const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    const frames = Buffer.concat([
      tool('zstd', ['-c', '--no-check'], input.subarray(0, 1000)),
      skippable,
      tool('zstd', ['-c'], Buffer.alloc(0)),
      await through(createCompressor('zstd', 19), input.subarray(1000, 3000)),
    ]);
    const decoded = await buffer(Readable.from([...frames].map((byte) => Buffer.of(byte))).pipe(createDecompressor('zstd')));
    expect(decoded.equals(input.subarray(0, 3000))).toBe(true);
  });

  it.each(Array.from({ length: 19 }, (_, index) => index + 1))(
    'level %i declares a window of at most 8 MiB and a content checksum (zstd -lv)',
    async (level) => {
      const file = join(work, `level-${level}.zst`);
      await writeFile(file, await through(createCompressor('zstd', level), input.subarray(0, 100_000)));
      const listing = execFileSync('zstd', ['-lv', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const window = Number(/Window Size: .*\((\d+) B\)/.exec(listing)?.[1]);
      expect(window).toBeGreaterThan(0);
      expect(window).toBeLessThanOrEqual(EIGHT_MIB);
      expect(listing).toMatch(/Check: XXH64/);
    },
  );
});

describe('levels and names', () => {
  it.each([
    ['gzip', 6],
    ['zstd', 3],
  ] as const)('%s defaults to level %i', async (compression, level) => {
    const byDefault = await through(createCompressor(compression), input);
    expect(byDefault.equals(await through(createCompressor(compression, level), input))).toBe(true);
    expect(byDefault.equals(await through(createCompressor(compression, level + 1), input))).toBe(false);
  });

  it.each([
    ['gzip', 0],
    ['gzip', 10],
    ['gzip', 2.5],
    ['zstd', 0],
    ['zstd', 20],
    ['zstd', 22],
    ['none', 1],
  ] as const)('%s level %s is refused with an InputError', (compression, level) => {
    expect(() => createCompressor(compression, level)).toThrow(InputError);
  });

  it('passes data through unchanged with "none"', async () => {
    expect((await through(createCompressor('none'), input)).equals(input)).toBe(true);
    expect((await through(createDecompressor('none'), input)).equals(input)).toBe(true);
  });

  it('names extensions and detects by magic bytes', () => {
    expect(COMPRESSIONS.map((compression: Compression) => fileExtension(compression))).toEqual(['.gz', '.zst', '']);
    expect(detectCompression(Buffer.from('070701'))).toBe('none');
    expect(detectCompression(Buffer.alloc(0))).toBe('none');
  });
});
