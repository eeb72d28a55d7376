/**
 * gunzip through ISA-L (native/inflate.c behind IsalGunzip) and through
 * node:zlib (RAMPACK_INFLATE=zlib), both as createDecompressor('gzip') gives
 * them: the same bytes as node:zlib and Debian's gzip, the same streams
 * refused (node:zlib's Gunzip is the oracle, however the input is cut), a
 * slow reader pauses decoding, and a stream destroyed mid-way neither
 * crashes nor keeps its native state.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Readable, type Transform } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDecompressor, describeGunzip, isCorruptStreamError } from '../../src/compress/index.ts';
import { INFLATE_ADDON_PATH, IsalGunzip, nativeInflate, type InflaterHandle, type NativeInflate } from '../../src/compress/native-inflate.ts';
import { OUTPUT_CHUNK } from '../../src/compress/zstd-frames.ts';
import { InputError } from '../../src/errors.ts';

const MiB = 1024 * 1024;
const addon = nativeInflate().addon;

/** Random words with incompressible stretches, about 1 MB repeated: real work for inflate. */
function mixed(size: number): Buffer {
  const words = ['initramfs', 'kernel', 'layer', 'digest', 'cpio', 'gzip', 'agent', '/init', 'rootfs', '\n'];
  const text = Buffer.from(Array.from(randomBytes(100_000), (byte) => words[byte % words.length]).join(' '));
  const block = Buffer.concat([text, randomBytes(200_000)]);
  return Buffer.concat(Array.from({ length: Math.ceil(size / block.length) }, () => block)).subarray(0, size);
}

function gzipTool(data: Buffer, ...args: string[]): Buffer {
  return execFileSync('gzip', ['-c', ...args], { input: data, maxBuffer: 256 * MiB });
}

/** `data` cut into pieces of `size` bytes (the last one shorter). */
function pieces(data: Buffer, size: number): Buffer[] {
  return Array.from({ length: Math.ceil(data.length / size) }, (_, index) => data.subarray(index * size, (index + 1) * size));
}

function through(gunzip: Transform, chunks: Buffer[]): Promise<Buffer> {
  return buffer(Readable.from(chunks, { objectMode: false }).pipe(gunzip));
}

/** The bytes a gunzip gives for `chunks`, or that it refused them (and whether as a corrupt stream). */
async function outcome(gunzip: Transform, chunks: Buffer[]): Promise<{ bytes: string } | { refused: boolean }> {
  try {
    return { bytes: (await through(gunzip, chunks)).toString('base64') };
  } catch (error) {
    return { refused: isCorruptStreamError(error) };
  }
}

/** Every way of cutting `data` in two, whole, and byte by byte. */
function cuts(data: Buffer): Buffer[][] {
  const twoPieces = Array.from({ length: data.length + 1 }, (_, at) => [data.subarray(0, at), data.subarray(at)]);
  return [[data], pieces(data, 1), ...twoPieces];
}

const hello = zlib.gzipSync('hello ');
const world = gzipTool(Buffer.from('world'), '-9');
const text = Buffer.from('one gzip member with a header of every kind. '.repeat(20));

/** A member whose header has FEXTRA (holding `extra`), FNAME, FCOMMENT and FHCRC (wrong on request). */
function memberWithFullHeader(extra: Buffer, wrongHeaderCrc = false): Buffer {
  const fixed = Buffer.from([0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 0, 0, 0, 0, 0, 3]);
  const header = Buffer.concat([fixed, Buffer.from([extra.length, 0]), extra, Buffer.from('name\0comment\0')]);
  const crc16 = (zlib.crc32(header) & 0xffff) ^ (wrongHeaderCrc ? 1 : 0);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(text), 0);
  trailer.writeUInt32LE(text.length, 4);
  return Buffer.concat([header, Buffer.from([crc16 & 0xff, crc16 >> 8]), zlib.deflateRawSync(text), trailer]);
}

/** `data` with one byte changed. */
function damaged(data: Buffer, offset: number, change: (byte: number) => number): Buffer {
  const copy = Buffer.from(data);
  const at = offset < 0 ? copy.length + offset : offset;
  copy[at] = change(copy[at]!);
  return copy;
}

const compressible = Buffer.alloc(24 * MiB, 'rampack ');
const random = randomBytes(MiB);
const medium = mixed(2 * MiB);

const IMPLEMENTATIONS = [
  { name: 'ISA-L', inflate: undefined, run: addon !== undefined || Boolean(process.env.CI) },
  { name: 'node:zlib (RAMPACK_INFLATE=zlib)', inflate: 'zlib', run: true },
];

for (const { name, inflate, run } of IMPLEMENTATIONS) {
  describe.runIf(run)(`gunzip by ${name}`, () => {
    const before = process.env.RAMPACK_INFLATE;
    beforeAll(() => {
      if (inflate === undefined) delete process.env.RAMPACK_INFLATE;
      else process.env.RAMPACK_INFLATE = inflate;
    });
    afterAll(() => {
      if (before === undefined) delete process.env.RAMPACK_INFLATE;
      else process.env.RAMPACK_INFLATE = before;
    });
    const gunzip = () => createDecompressor('gzip');

    it('is what createDecompressor gives', () => {
      expect(gunzip() instanceof IsalGunzip).toBe(inflate === undefined);
    });

    it.each([
      ['an empty member', Buffer.alloc(0)],
      ['one byte', Buffer.from('x')],
      ['random bytes (stored blocks)', random],
      ['highly compressible data', compressible],
      ['mixed data', medium],
    ])('gives back %s, compressed by node:zlib and by gzip -1/-9', async (_name, data) => {
      for (const compressed of [zlib.gzipSync(data), gzipTool(data, '-1'), gzipTool(data, '-9')]) {
        const decoded = await through(gunzip(), pieces(compressed, 64 * 1024));
        expect(decoded.equals(data)).toBe(true);
      }
    });

    it('gives back more than 64 MiB in full output chunks, fed in uneven pieces', async () => {
      const data = Buffer.concat([mixed(40 * MiB), compressible, random]);
      const compressed = gzipTool(data, '-1');
      const chunks: Buffer[] = [];
      for (let offset = 0, size = 1; offset < compressed.length; offset += size, size = (size * 7 + 13) % 300_000) {
        chunks.push(compressed.subarray(offset, offset + size));
      }
      const sizes: number[] = [];
      const decoded = Readable.from(chunks, { objectMode: false }).pipe(gunzip());
      decoded.on('data', (chunk: Buffer) => sizes.push(chunk.length));
      expect((await buffer(decoded)).equals(data)).toBe(true);
      if (inflate === undefined) expect(sizes.slice(0, -1).every((size) => size === OUTPUT_CHUNK)).toBe(true);
    });

    it('decodes a stream fed one byte at a time', async () => {
      const data = medium.subarray(0, 5_000);
      expect((await through(gunzip(), pieces(gzipTool(data), 1))).equals(data)).toBe(true);
    });

    it('decodes back-to-back members (node:zlib, gzip -9, empty, gzip -N with a name) as one stream', async () => {
      const parts = [medium.subarray(0, 300_000), medium.subarray(300_000, 400_000), Buffer.alloc(0), medium.subarray(400_000)];
      const members = [zlib.gzipSync(parts[0]!), gzipTool(parts[1]!, '-9'), zlib.gzipSync(parts[2]!), gzipTool(parts[3]!, '-N')];
      const decoded = await through(gunzip(), pieces(Buffer.concat(members), 10_000));
      expect(decoded.equals(medium)).toBe(true);
    });

    it.each([
      ['two members', Buffer.concat([hello, world])],
      ['a member, then NUL padding', Buffer.concat([hello, Buffer.alloc(9)])],
      ['a member, NUL padding, then another member (ignored)', Buffer.concat([hello, Buffer.alloc(3), world])],
      ['a member, NUL padding, then garbage (ignored)', Buffer.concat([hello, Buffer.from([0, 0x47, 0x41])])],
      ['a member, then garbage', Buffer.concat([hello, Buffer.from('garbage after the member')])],
      ['a member, then a gzip magic byte', Buffer.concat([hello, Buffer.of(0x1f)])],
      ['a member, then part of another', Buffer.concat([hello, world.subarray(0, 15)])],
      ['a header with FEXTRA, FNAME, FCOMMENT and FHCRC', memberWithFullHeader(Buffer.from([1, 2, 3]))],
      ['a header with an empty FEXTRA', memberWithFullHeader(Buffer.alloc(0))],
      ['nothing', Buffer.alloc(0)],
      ['NUL bytes only', Buffer.alloc(12)],
    ])('treats %s as node:zlib does, however it is cut', async (_name, data) => {
      for (const chunks of cuts(data)) {
        expect(await outcome(gunzip(), chunks), `cut into ${chunks.map((chunk) => chunk.length).join('+')}`).toEqual(
          await outcome(zlib.createGunzip(), chunks),
        );
      }
    });

    const refusals: [string, Buffer, RegExp][] = [
      ['a wrong CRC-32', damaged(hello, -8, (byte) => byte ^ 1), /CRC-32 or size/],
      ['a wrong ISIZE', damaged(hello, -1, (byte) => byte ^ 1), /CRC-32 or size/],
      ['corrupt deflate data', damaged(hello, 10, () => 0xff), /deflate/],
      ['a wrong back-reference', damaged(zlib.gzipSync(text), 20, (byte) => byte ^ 0x55), /deflate|CRC-32/],
      ['wrong magic bytes', damaged(hello, 1, () => 0x8c), /not a gzip header/],
      ['a method other than deflate', damaged(hello, 2, () => 7), /compression method/],
      ['reserved header flags', damaged(hello, 3, () => 0x80), /reserved flag/],
      ['a wrong header CRC-16', memberWithFullHeader(Buffer.from([1, 2, 3]), true), /CRC-16/],
      ['a stream cut inside the header', hello.subarray(0, 6), /truncated/],
      ['a stream cut inside the deflate data', gzipTool(medium).subarray(0, 100_000), /truncated/],
      ['a stream cut inside the trailer', hello.subarray(0, hello.length - 3), /truncated/],
      ['an empty stream', Buffer.alloc(0), /empty/],
    ];
    it.each(refusals)('refuses %s as a corrupt stream, however it is cut', async (_name, data, message) => {
      for (const chunks of data.length < 1000 ? cuts(data) : [[data], pieces(data, 4096)]) {
        const error = await through(gunzip(), chunks).then(() => undefined, (error: unknown) => error);
        expect(isCorruptStreamError(error), `cut into ${chunks.map((chunk) => chunk.length).join('+')}: ${error}`).toBe(true);
        if (inflate === undefined) expect((error as Error).message).toMatch(message);
      }
    });

    it('stops decoding while the reader is behind, even inside one input chunk', async () => {
      const stream = gunzip();
      stream.end(zlib.gzipSync(compressible)); // about 24 KiB in, 24 MiB out
      await sleep(200);
      expect(stream.readableLength).toBeLessThanOrEqual(2 * OUTPUT_CHUNK);
      let size = 0;
      let buffered = 0;
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        size += chunk.length;
        buffered = Math.max(buffered, stream.readableLength);
        if (size % (4 * MiB) < chunk.length) await sleep(20);
      }
      expect(size).toBe(compressible.length);
      expect(buffered).toBeLessThanOrEqual(2 * OUTPUT_CHUNK);
    });

    it.each([
      ['while decoding', 0],
      ['while the reader is behind', 100],
    ])('is destroyed %s without an error or a crash', async (_when, wait) => {
      const stream = gunzip();
      stream.write(gzipTool(compressible, '-1'));
      await sleep(wait);
      const closed = once(stream, 'close');
      stream.destroy();
      await closed;
      await sleep(50); // a call still on the thread pool completes into the destroyed stream
      expect(stream.destroyed).toBe(true);
    });
  });
}

/** The addon with each handle's calls counted. */
function countingAddon(native: NativeInflate) {
  const counts = { created: 0, closed: 0, calls: 0 };
  const counting: NativeInflate = {
    ...native,
    createInflater: () => (counts.created++, native.createInflater()),
    close: (handle) => (counts.closed++, native.close(handle)),
    inflate: (handle, input, output, callback) => (counts.calls++, native.inflate(handle, input, output, callback)),
  };
  return { counts, counting };
}

function inflateOnce(native: NativeInflate, handle: InflaterHandle, input: Uint8Array, output: Uint8Array) {
  return new Promise<{ consumed: number; produced: number; memberEnded: boolean }>((resolve, reject) =>
    native.inflate(handle, input, output, (error, consumed, produced, memberEnded) =>
      error ? reject(error) : resolve({ consumed, produced, memberEnded }),
    ),
  );
}

describe.runIf(addon !== undefined || Boolean(process.env.CI))('the ISA-L addon', () => {
  const native = addon!;

  it('says which gunzip runs, and RAMPACK_INFLATE chooses node:zlib or is refused', () => {
    const before = process.env.RAMPACK_INFLATE;
    try {
      delete process.env.RAMPACK_INFLATE;
      expect(describeGunzip()).toMatch(/^ISA-L \d+\.\d+\.\d+$/);
      process.env.RAMPACK_INFLATE = 'zlib';
      expect(describeGunzip()).toMatch(/^node:zlib \(zlib [\d.]+.*; RAMPACK_INFLATE=zlib\)$/);
      process.env.RAMPACK_INFLATE = 'isal';
      expect(() => createDecompressor('gzip')).toThrow(InputError);
    } finally {
      if (before === undefined) delete process.env.RAMPACK_INFLATE;
      else process.env.RAMPACK_INFLATE = before;
    }
  });

  it('stops at a member end and hands back the bytes after it', async () => {
    const handle = native.createInflater();
    const output = Buffer.alloc(64);
    const first = await inflateOnce(native, handle, Buffer.concat([hello, world]), output);
    expect(first).toEqual({ consumed: hello.length, produced: 6, memberEnded: true });
    const second = await inflateOnce(native, handle, world, output.subarray(6));
    expect(second).toEqual({ consumed: world.length, produced: 5, memberEnded: true });
    expect(output.subarray(0, 11).toString()).toBe('hello world');
    native.close(handle);
  });

  it('refuses a second call in flight, a foreign handle, an empty output, shared memory and a closed handle', async () => {
    const handle = native.createInflater();
    const memory = Buffer.alloc(1024);
    const pending = inflateOnce(native, handle, hello, Buffer.alloc(64));
    expect(() => native.inflate(handle, hello, Buffer.alloc(64), () => {})).toThrow(/already in flight/);
    await pending;
    expect(() => native.inflate({} as InflaterHandle, hello, memory, () => {})).toThrow(TypeError);
    expect(() => native.inflate(handle, hello, memory.subarray(0, 0), () => {})).toThrow(RangeError);
    expect(() => native.inflate(handle, memory.subarray(0, 100), memory.subarray(50), () => {})).toThrow(/share memory/);
    native.close(handle);
    expect(() => native.inflate(handle, hello, memory, () => {})).toThrow(/closed/);
    native.close(handle); // closing twice is harmless
  });

  it('finishes a call in flight when closed during it, then frees its state', async () => {
    const handle = native.createInflater();
    const pending = inflateOnce(native, handle, hello, Buffer.alloc(64));
    native.close(handle);
    expect(await pending).toEqual({ consumed: hello.length, produced: 6, memberEnded: true });
    expect(() => native.inflate(handle, hello, Buffer.alloc(64), () => {})).toThrow(/closed/);
  });

  it('closes its inflater when a stream ends, fails or is destroyed mid-way', async () => {
    const { counts, counting } = countingAddon(native);
    await through(new IsalGunzip(counting), [hello]);
    await through(new IsalGunzip(counting), [hello.subarray(0, 5)]).catch(() => {});
    for (let index = 0; index < 20; index++) {
      const stream = new IsalGunzip(counting);
      stream.write(gzipTool(compressible.subarray(0, 4 * MiB), '-1'));
      await sleep(index % 4);
      stream.destroy();
      await once(stream, 'close');
    }
    await sleep(50);
    expect(counts.created).toBe(22);
    expect(counts.closed).toBe(22);
  });

  it('loads in worker threads beside the main thread (context-aware)', async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const native = require(workerData.path);
      const output = Buffer.alloc(64);
      native.inflate(native.createInflater(), workerData.input, output, (error, consumed, produced) => {
        parentPort.postMessage(error ? error.message : output.subarray(0, produced).toString());
      });`;
    const workers = [0, 1].map(() => new Worker(code, { eval: true, workerData: { path: INFLATE_ADDON_PATH, input: hello } }));
    const replies = await Promise.all(workers.map(async (worker) => (await once(worker, 'message'))[0] as string));
    expect(replies).toEqual(['hello ', 'hello ']);
    await Promise.all(workers.map((worker) => worker.terminate()));
  });
});
