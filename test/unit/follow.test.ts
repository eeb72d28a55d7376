/**
 * Following a blob while it is written into the blob cache, the way a layer
 * download is read by the unpacker: bytes come in order as they land on
 * disk, the stream ends only once the blob is verified, and a download that
 * starts over after bytes were read fails with DownloadRestartedError.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { DownloadRestartedError, RegistryError, VerificationError } from '../../src/errors.ts';
import { BlobCache, type PartialBlob } from '../../src/registry/cache.ts';
import { CacheDownload } from '../../src/registry/follow.ts';
import { sha256Digest } from '../../src/util/digest.ts';

const MIB = 1024 * 1024;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-follow-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A download of `content` into a fresh cache, whose writing `fill` drives; `digest` defaults to the content's. */
async function download(content: Buffer, fill: (blob: PartialBlob) => Promise<void>, digest = sha256Digest(content)): Promise<CacheDownload> {
  const cache = new BlobCache(new Cache(await mkdtemp(join(work, 'cache-'))));
  return new CacheDownload(`blob ${digest}`, (writing) =>
    cache.write(digest, content.length, async (blob) => {
      writing(blob);
      await fill(blob);
    }),
  );
}

/** A promise the test resolves when it wants the writer to go on. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

async function readAll(chunks: AsyncIterator<Buffer>): Promise<Buffer> {
  const read: Buffer[] = [];
  for (let next = await chunks.next(); !next.done; next = await chunks.next()) read.push(next.value);
  return Buffer.concat(read);
}

describe('following a blob as it is written', () => {
  it('reads bytes before the download ends, and ends once the blob is verified in the cache', async () => {
    const content = randomBytes(3 * MIB);
    const halfway = gate();
    const blob = await download(content, async (partial) => {
      await partial.append([content.subarray(0, 1.5 * MIB)]);
      await halfway.opened;
      await partial.append([content.subarray(1.5 * MIB, 2 * MIB), content.subarray(2 * MIB)]);
    });
    let complete = false;
    void blob.path.then(() => (complete = true));
    const reader = blob.follow()[Symbol.asyncIterator]();
    const first = await reader.next();
    expect(first.value.equals(content.subarray(0, first.value.length))).toBe(true);
    expect(complete).toBe(false);
    halfway.open();
    const rest = await readAll(reader);
    expect(complete).toBe(true);
    expect(Buffer.concat([first.value, rest]).equals(content)).toBe(true);
    expect((await readFile(await blob.path)).equals(content)).toBe(true);
  });

  it('fails with DownloadRestartedError when the download starts over after bytes were read', async () => {
    const content = randomBytes(2 * MIB);
    const halfway = gate();
    const blob = await download(content, async (partial) => {
      await partial.append([content.subarray(0, 1.5 * MIB)]);
      await halfway.opened;
      await partial.restart();
      await partial.append([content]);
    });
    const reader = blob.follow()[Symbol.asyncIterator]();
    await reader.next();
    halfway.open();
    const error = await reader.next().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(DownloadRestartedError);
    expect((error as Error).message).toContain(`blob ${sha256Digest(content)}: the registry could not resume its download`);
    expect((await readFile(await blob.path)).equals(content)).toBe(true);
  });

  it('follows the new transfer when the download starts over before anything was read', async () => {
    const content = randomBytes(2 * MIB);
    const started = gate();
    const blob = await download(content, async (partial) => {
      // Less than one read's worth: the follower is still waiting for it.
      await partial.append([content.subarray(0, 100_000)]);
      await started.opened;
      await partial.restart();
      await partial.append([content]);
    });
    const all = readAll(blob.follow()[Symbol.asyncIterator]());
    await setTimeout(50); // the follower opens the file and waits for a whole read
    started.open();
    expect((await all).equals(content)).toBe(true);
  });

  it("fails with the download's error when the download gives up midway", async () => {
    const content = randomBytes(2 * MIB);
    const gaveUp = new RegistryError('downloading the blob: gave up after 5 attempts');
    const blob = await download(content, async (partial) => {
      await partial.append([content.subarray(0, 1.5 * MIB)]);
      throw gaveUp;
    });
    const error = await readAll(blob.follow()[Symbol.asyncIterator]()).catch((caught: unknown) => caught);
    expect(error).toBe(gaveUp);
  });

  it("fails with the download's error when the blob does not match its digest", async () => {
    const content = randomBytes(MIB);
    const blob = await download(content, (partial) => partial.append([content]), sha256Digest('something else'));
    const error = await readAll(blob.follow()[Symbol.asyncIterator]()).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(VerificationError);
    expect((error as Error).message).toContain('does not match its digest');
  });

  it('reads the cache file of a blob that was cached already or finished before it was followed', async () => {
    const content = randomBytes(MIB + 1);
    const cached = join(work, 'cached');
    await writeFile(cached, content);
    const alreadyCached = new CacheDownload('blob cached', async () => cached);
    expect((await readAll(alreadyCached.follow()[Symbol.asyncIterator]())).equals(content)).toBe(true);

    const finished = await download(content, (partial) => partial.append([content]));
    await finished.path;
    expect((await readAll(finished.follow()[Symbol.asyncIterator]())).equals(content)).toBe(true);
  });
});
