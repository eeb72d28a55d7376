/**
 * Property tests on bad input, with fixed seeds: random and mutated tar
 * layers go through unpackLayer + flattenLayers + newcArchive, and mutated
 * OCI layouts (index.json, manifest, config) through resolveImage and the
 * CLI. Every case must end in success or a RampackError (never another
 * exception, never a stack trace), within a time bound, and write nothing
 * but the cache and output directories.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { newcArchive } from '../../src/cpio/writer.ts';
import { RampackError } from '../../src/errors.ts';
import { OciLayoutStore, parseOciLayoutReference } from '../../src/sources/oci-layout.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { flattenLayers } from '../../src/layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../../src/layers/unpack.ts';
import type { TreeEntry } from '../../src/tree/entry.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { type RawEntrySpec, rawTar, tarHeader, writeBlob, writeOciLayout } from '../helpers/oci-builder.ts';

/** A case that takes longer than this counts as a hang. */
const CASE_TIMEOUT_MS = 5_000;

/** mulberry32: small, fast, and the same sequence on every machine. */
class Random {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(below: number): number {
    return Math.floor(this.next() * below);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  bytes(length: number): Buffer {
    return Buffer.from(Array.from({ length }, () => this.int(256)));
  }
}

const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1');

/** Names that hit the interesting rules: whiteouts, dots, symlink parents, long and odd bytes. */
const NAMES: (string | Buffer)[] = [
  'a', 'a/b', 'a/b/c', 'a/b/c/d', './a/x', '/a/y', 'a//z/', 'b', 'b/c', 'link', 'link/in', 'link/deeper/file',
  '.wh.a', 'a/.wh.b', 'a/.wh..wh..opq', '.wh..wh.plnk/x', 'a/../b/e', 'dev/null', 'x'.repeat(150),
  `${'y'.repeat(99)}/${'z'.repeat(99)}`, latin1('odd/\xff\x01\t\n'), 'init',
];
/** Names no valid image has: climbing out, the root itself, the cpio trailer, empty whiteouts. */
const BAD_NAMES: (string | Buffer)[] = ['../up', 'a/../../up', '.', './', '/', 'TRAILER!!!', 'a/.wh.', ''];
const SYMLINK_TARGETS: (string | Buffer)[] = [...NAMES, '/', '..', '../../..', '/a', '/link', 'link', 'x'.repeat(300), latin1('\xff')];
const TYPEFLAGS = ['0', '0', '0', '1', '2', '2', '3', '4', '5', '5', '6', '7', '\0', 'D'];
const BAD_TYPEFLAGS = ['S', 'V', 'g', 'x', 'L', 'K', 'Z'];
const SMALL_IDS = [0, 1, 100, 1000, 65_534, 262_144, 2_097_152, 3_000_000];
const NUMBERS = [0, 1, 7, 0o777, 0o7777, 262_143, 262_144, 2_097_151, 2_097_152, 2 ** 32 - 1, 2 ** 32, 2 ** 40, Number.MAX_SAFE_INTEGER];

/** Mostly plausible entries (hard links to names used before), with a minority of bad fields. */
function randomEntry(random: Random, earlier: (string | Buffer)[]): RawEntrySpec {
  const rare = <T>(usual: T, odd: () => T): T => (random.chance(0.02) ? odd() : usual);
  const typeflag = rare(random.pick(TYPEFLAGS), () => random.pick(BAD_TYPEFLAGS));
  const data = typeflag === '0' || random.chance(0.05) ? random.bytes(random.int(700)) : undefined;
  const name = rare(random.pick(NAMES), () => random.pick(BAD_NAMES));
  earlier.push(name);
  const entry: RawEntrySpec = {
    name,
    typeflag,
    data,
    mode: random.int(0o10000),
    uid: rare(random.pick(SMALL_IDS), () => random.pick(NUMBERS)),
    gid: rare(random.pick(SMALL_IDS), () => random.pick(NUMBERS)),
    mtime: rare(1_700_000_000, () => random.pick(NUMBERS)),
    linkname: typeflag === '1' ? rare(random.pick(earlier), () => random.pick(BAD_NAMES)) : random.pick(SYMLINK_TARGETS),
    devmajor: rare(random.int(300), () => random.pick(NUMBERS)),
    devminor: rare(random.int(300), () => random.pick(NUMBERS)),
    longNames: random.chance(0.5) ? 'gnu' : 'pax',
  };
  if (random.chance(0.02)) entry.size = random.pick([0, 1, 511, 512, 513, 5 * 1024 ** 3]);
  if (random.chance(0.04)) {
    entry.pax = random.pick<Record<string, string | Buffer>>([
      { uid: String(random.pick(NUMBERS)) },
      { mtime: random.pick(['1.5', '-3.25', 'abc', '1e9', '']) },
      { 'SCHILY.xattr.security.capability': random.bytes(20) },
      { 'LIBARCHIVE.xattr.user.%ZZ': 'not base64!' },
      { size: random.pick(['0', '99999999999', '-1', 'x']) },
      { 'GNU.sparse.major': '1' },
      { path: random.pick(NAMES) },
    ]);
  }
  return entry;
}

function randomTar(random: Random): Buffer {
  const earlier: (string | Buffer)[] = ['a'];
  return rawTar(Array.from({ length: 1 + random.int(12) }, () => randomEntry(random, earlier)));
}

/** Damages a byte string: flipped bytes, truncation, a random header spliced in, a zeroed or repeated range. */
function mutate(random: Random, bytes: Buffer): Buffer {
  const copy = Buffer.from(bytes);
  const at = random.int(Math.max(1, copy.length));
  switch (random.int(5)) {
    case 0:
      for (let flips = 1 + random.int(8); flips > 0; flips--) copy[random.int(Math.max(1, copy.length))] = random.int(256);
      return copy;
    case 1:
      return copy.subarray(0, at);
    case 2: {
      const block = at - (at % 512);
      const header = tarHeader({ name: random.bytes(random.int(100)), typeflag: String.fromCharCode(random.int(128)), size: random.pick(NUMBERS) });
      return Buffer.concat([copy.subarray(0, block), header, copy.subarray(block)]);
    }
    case 3:
      return Buffer.concat([copy.subarray(0, at), Buffer.alloc(random.int(2048)), copy.subarray(at)]);
    default:
      return Buffer.concat([copy.subarray(0, at), copy.subarray(random.int(Math.max(1, copy.length)))]);
  }
}

function sha256Digest(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Runs `work`; a RampackError is a fine outcome, anything else (or a hang) fails with the case named. */
async function expectGraceful(label: string, work: () => Promise<void>): Promise<'ok' | 'rejected'> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${label}: still running after ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
  });
  try {
    await Promise.race([work(), hang]);
    return 'ok';
  } catch (error) {
    if (error instanceof RampackError) return 'rejected';
    throw new Error(`${label}: ${error instanceof Error ? error.stack : String(error)}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Tree paths are normalised byte strings relative to the root: nothing can point outside it. */
function expectConfined(entries: readonly TreeEntry[]): void {
  for (const { path } of entries) {
    expect(path.split('/').every((component) => component !== '' && component !== '.' && component !== '..'), path).toBe(true);
  }
}

/** Flattens and archives the layers, reading the whole archive. */
async function archiveLayers(layers: UnpackedLayer[]): Promise<void> {
  const { entries } = flattenLayers(layers);
  expectConfined(entries);
  for await (const _chunk of newcArchive(entries));
}

/** Every file below `dir`, relative to it. */
async function filesBelow(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => !entry.isDirectory()).map((entry) => relative(dir, join(entry.parentPath, entry.name)));
}

let sandbox: string;

beforeAll(async () => {
  sandbox = await mkdtemp(join(tmpdir(), 'rampack-fuzz-'));
});

afterAll(async () => {
  await rm(sandbox, { recursive: true, force: true });
});

describe('random and mutated tar layers', () => {
  it('end in a tree or a RampackError, quickly, writing only to the cache', async () => {
    const random = new Random(0x5eed_0004);
    const blobs = join(sandbox, 'tar-blobs');
    const cacheDir = join(sandbox, 'tar-cache');
    await mkdir(blobs);
    const outcomes = { ok: 0, rejected: 0 };
    for (let index = 0; index < 300; index++) {
      const layers: { blob: Buffer; tar: Buffer }[] = [];
      for (let count = 1 + random.int(3); count > 0; count--) {
        const valid = randomTar(random);
        const tar = random.chance(0.4) ? mutate(random, valid) : valid;
        const compress = random.pick([gzipSync, zstdCompressSync, (bytes: Buffer) => bytes]);
        const compressed = compress(tar);
        layers.push({ tar, blob: random.chance(0.1) ? mutate(random, compressed) : compressed });
      }
      const outcome = await expectGraceful(`tar case ${index}`, async () => {
        const unpacked: UnpackedLayer[] = [];
        for (const [position, { blob, tar }] of layers.entries()) {
          const blobPath = join(blobs, `${index}-${position}`);
          await writeFile(blobPath, blob);
          const descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256Digest(blob), size: blob.length };
          unpacked.push(await unpackLayer({ blob: blobPath, descriptor, diffId: sha256Digest(tar), cache: new Cache(cacheDir) }));
        }
        await archiveLayers(unpacked);
      });
      outcomes[outcome]++;
    }
    // Both outcomes occur: the generator makes valid layers, the mutations broken ones.
    expect(outcomes.ok).toBeGreaterThan(30);
    expect(outcomes.rejected).toBeGreaterThan(30);
    const cached = await filesBelow(cacheDir);
    expect(cached.filter((path) => !/^layers\/sha256\/[0-9a-f]{64}\.(tar|json)$/.test(path))).toEqual([]);
  });
});

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Documents = Record<'index' | 'manifest' | 'config', Json>;

const ODD_VALUES: Json[] = [
  null, true, 0, -1, 1e308, 2 ** 53 + 1, '', 'sha256:', `sha256:${'g'.repeat(64)}`, `sha256:${'0'.repeat(64)}`,
  '../../../../etc/passwd', '/etc/passwd', [], {}, [null], [{}], { digest: 5 }, 'x'.repeat(5000),
  'application/vnd.oci.image.index.v1+json', 'application/vnd.oci.image.manifest.v1+json',
];

/** Every [container, key] pair of a JSON value, depth first. */
function slots(value: Json): [Json[] | { [key: string]: Json }, string | number][] {
  if (value === null || typeof value !== 'object') return [];
  const keys: (string | number)[] = Array.isArray(value) ? value.map((_item, index) => index) : Object.keys(value);
  return keys.flatMap((key) => {
    const child = (value as Record<string | number, Json>)[key]!;
    return [[value, key] as [Json[] | { [key: string]: Json }, string | number], ...slots(child)];
  });
}

/** Replaces, deletes or duplicates one value somewhere in the document. */
function mutateJson(random: Random, document: Json): Json {
  const copy = structuredClone(document);
  const all = slots(copy);
  if (all.length === 0 || random.chance(0.05)) return random.pick(ODD_VALUES);
  const [container, key] = random.pick(all);
  const record = container as Record<string | number, Json>;
  if (random.chance(0.2) && !Array.isArray(container)) delete record[key];
  else if (random.chance(0.2)) record[key] = structuredClone(random.pick(all)[0]);
  else record[key] = random.pick(ODD_VALUES);
  return copy;
}

/** The serialized, damaged form of one document: structural changes mostly, raw bytes sometimes. */
function damagedBytes(random: Random, document: Json): Buffer {
  const text = Buffer.from(JSON.stringify(random.chance(0.8) ? mutateJson(random, document) : document));
  return random.chance(0.25) ? mutate(random, text) : text;
}

/**
 * A layout at `dir` whose `target` document is damaged and whose other
 * documents point at it by digest, so the damage reaches the parser.
 */
async function damagedLayout(random: Random, shared: string, dir: string, documents: Documents): Promise<void> {
  const target = random.pick(['index', 'manifest', 'config'] as const);
  const manifest = structuredClone(documents.manifest) as { config: Json };
  const configBytes = target === 'config' ? damagedBytes(random, documents.config) : Buffer.from(JSON.stringify(documents.config));
  const config = await writeBlob(shared, configBytes, 'application/vnd.oci.image.config.v1+json');
  manifest.config = { ...(manifest.config as object), digest: config.digest, size: config.size };
  const manifestBytes = target === 'manifest' ? damagedBytes(random, manifest) : Buffer.from(JSON.stringify(manifest));
  const top = await writeBlob(shared, manifestBytes, 'application/vnd.oci.image.manifest.v1+json');
  const index = structuredClone(documents.index) as { manifests: Record<string, Json>[] };
  index.manifests[0] = { ...index.manifests[0], digest: top.digest, size: top.size };
  await mkdir(dir, { recursive: true });
  await symlink(join(shared, 'blobs'), join(dir, 'blobs'));
  await writeFile(join(dir, 'index.json'), target === 'index' ? damagedBytes(random, index) : JSON.stringify(index));
}

/** A valid two-layer image at `dir`, and its three documents. */
async function baseLayout(dir: string): Promise<Documents> {
  const layers = [{ entries: [{ name: 'etc/hostname', content: 'box\n' }] }, { compression: 'zstd' as const, entries: [{ name: 'etc/.wh.hostname', content: '' }] }];
  const top = await writeOciLayout(dir, { layers }, '1');
  const blob = async (digest: string): Promise<Json> => JSON.parse(await readFile(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), 'utf8'));
  const manifest = await blob(top.digest);
  const { config } = manifest as unknown as { config: Descriptor };
  return { index: JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')), manifest, config: await blob(config.digest) };
}

describe('mutated OCI layout documents', () => {
  let shared: string;
  let documents: Documents;

  beforeAll(async () => {
    shared = join(sandbox, 'json-shared');
    documents = await baseLayout(shared);
  });

  it('resolve and build to a tree or a RampackError, quickly', async () => {
    const random = new Random(0x15_0e_0004);
    const cacheDir = join(sandbox, 'json-cache');
    const outcomes = { ok: 0, rejected: 0 };
    for (let index = 0; index < 200; index++) {
      const dir = join(sandbox, 'json', String(index));
      await damagedLayout(random, shared, dir, documents);
      const outcome = await expectGraceful(`layout case ${index} (${dir})`, async () => {
        const store = new OciLayoutStore(parseOciLayoutReference(`oci:${dir}:1`));
        const image = await resolveImage(store, 'x86_64');
        const layers: UnpackedLayer[] = [];
        for (const [position, descriptor] of image.layers.entries()) {
          const blobPath = await store.blobPath(descriptor);
          layers.push(await unpackLayer({ blob: blobPath, descriptor, diffId: image.config.rootfs.diff_ids[position]!, cache: new Cache(cacheDir) }));
        }
        await archiveLayers(layers);
      });
      outcomes[outcome]++;
    }
    expect(outcomes.ok).toBeGreaterThan(10);
    expect(outcomes.rejected).toBeGreaterThan(50);
  });

  it('through the CLI: exit codes of RampackErrors, no stack traces, files only in the output and cache', async () => {
    const random = new Random(0xc1_1e_0004);
    const agent = await buildTestAgent('x86_64');
    const work = join(sandbox, 'cli');
    for (let index = 0; index < 4; index++) {
      await damagedLayout(random, shared, join(work, 'layouts', String(index)), documents);
      const result = await runRampack(
        ['build', '--image', `oci:layouts/${index}:1`, '--agent', agent, '--arch', 'x86_64', '--language', 'fuzz', '--version', String(index), '--out', 'out', '--cache', 'cache'],
        { cwd: work },
      );
      expect([0, 3, 5], result.stderr).toContain(result.code);
      expect(result.stderr).not.toMatch(/^\s+at /m);
    }
    const written = (await filesBelow(work)).filter((path) => !path.startsWith('layouts/'));
    expect(written.filter((path) => !/^(out\/(manifest\.json|fuzz-\d-x86_64\.cpio\.gz)|cache\/.+)$/.test(path))).toEqual([]);
  });
});
