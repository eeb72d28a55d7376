import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  COMPRESSIONS,
  createCompressor,
  createDecompressor,
  detectCompression,
  fileExtension,
  type Compression,
} from '../../src/compress/index.ts';
import { InputError } from '../../src/errors.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const TOOL_COMMAND = { gzip: 'gzip', zstd: 'zstd' } as const;
const EIGHT_MIB = 8 * 1024 * 1024;

let work: string;
/** Text of random words (compressible, but not trivially) with incompressible stretches. */
const words = ['initramfs', 'kernel', 'layer', 'digest', 'cpio', 'zstd', 'gzip', 'agent', '/init', 'rootfs', '\n'];
const input = Buffer.concat(
  Array.from({ length: 8 }, () => [
    Buffer.from(Array.from(randomBytes(20_000), (byte) => words[byte % words.length]).join(' ')),
    randomBytes(10_000),
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

beforeAll(async () => {
  ensureTools(TOOLS.zstd, TOOLS.gzip);
  work = await mkdtemp(join(tmpdir(), 'rampack-compress-'));
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
