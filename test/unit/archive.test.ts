/**
 * Image archives as sources: archives written by skopeo (the oracle for both
 * formats) and hand-made ones for the cases skopeo does not write (gzip
 * layers, several images, damage), resolved by rampack and built by its CLI.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import { openContentStore } from '../../src/sources/open.ts';
import { readNewcArchive, type CpioRecord } from '../../src/cpio/reader.ts';
import { InputError, RampackError, VerificationError } from '../../src/errors.ts';
import { parseArchiveReference } from '../../src/sources/archive.ts';
import { resolveImage } from '../../src/oci/resolve.ts';
import type { ResolvedImage } from '../../src/oci/content.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { tarBytes, writeOciLayout, type TarEntrySpec } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let layout: string;
let ociArchive: string;
let dockerArchive: string;

const sha256 = (data: Buffer | string) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

function skopeoRaw(reference: string): Buffer {
  return execFileSync('skopeo', ['inspect', '--raw', reference]);
}

function skopeoCopy(from: string, to: string): void {
  execFileSync('skopeo', ['copy', '--quiet', '--insecure-policy', from, to]);
}

async function resolveFrom(reference: string): Promise<{ image: ResolvedImage; store: Awaited<ReturnType<typeof openContentStore>> }> {
  const store = await openContentStore(reference, { cache: new Cache(mkdtempSync(join(work, 'cache-'))) });
  return { image: await resolveImage(store, 'x86_64'), store };
}

async function failure(promise: Promise<unknown>): Promise<RampackError> {
  const error = await promise.then(() => undefined, (caught: unknown) => caught);
  expect(error).toBeInstanceOf(RampackError);
  return error as RampackError;
}

/** A tar of files given as path -> content (a string starting with "->" makes a symlink). */
async function writeTar(path: string, files: Record<string, Buffer | string>): Promise<string> {
  const entries = Object.entries(files).map(([name, content]): TarEntrySpec =>
    typeof content === 'string' && content.startsWith('->') ? { name, type: 'symlink', linkname: content.slice(2) } : { name, content },
  );
  writeFileSync(path, await tarBytes(entries));
  return path;
}

/** The files of an OCI layout directory, as writeTar takes them. */
function layoutFiles(dir: string): Record<string, Buffer> {
  const files: Record<string, Buffer> = { 'oci-layout': readFileSync(join(dir, 'oci-layout')), 'index.json': readFileSync(join(dir, 'index.json')) };
  for (const name of readdirSync(join(dir, 'blobs', 'sha256'))) files[`blobs/sha256/${name}`] = readFileSync(join(dir, 'blobs', 'sha256', name));
  return files;
}

/** A docker-save style image: config, legacy `<id>/layer.tar` layers, manifest.json entry. */
async function dockerImage(marker: string, gzipLayer: boolean) {
  const layer = await tarBytes([{ name: 'etc/', type: 'directory' }, { name: 'etc/marker', content: `${marker}\n` }]);
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1'] }, rootfs: { type: 'layers', diff_ids: [sha256(layer)] } });
  const configName = `${sha256(config).slice(7)}.json`;
  const blob = gzipLayer ? gzipSync(layer) : layer;
  return {
    files: { [configName]: config, [`${marker}/layer.tar`]: blob } as Record<string, Buffer | string>,
    entry: { Config: configName, RepoTags: [`example/${marker}:1`], Layers: [`${marker}/layer.tar`] },
    layer,
    blob,
  };
}

beforeAll(async () => {
  ensureTools(TOOLS.skopeo, TOOLS.cpio);
  work = mkdtempSync(join(tmpdir(), 'rampack-archive-test-'));
  layout = join(work, 'layout');
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  ociArchive = join(work, 'image-oci.tar');
  dockerArchive = join(work, 'image-docker.tar');
  skopeoCopy(`oci:${layout}:1.0`, `oci-archive:${ociArchive}:1.0`);
  // skopeo cannot write zstd layers into a docker archive: give it gzip ones. The config (diff_ids) stays the same.
  const gzipOnly = join(work, 'layout-gzip');
  const spec = languageImageSpec();
  await writeOciLayout(gzipOnly, { ...spec, layers: spec.layers.map((layer) => ({ ...layer, compression: layer.compression === 'zstd' ? 'gzip' : layer.compression })) }, '1.0');
  skopeoCopy(`oci:${gzipOnly}:1.0`, `docker-archive:${dockerArchive}:lang/runtime:1.0`);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('archive references', () => {
  it('splits FILE and NAME at the first colon, as skopeo does', () => {
    expect(parseArchiveReference('oci-archive:/tmp/a.tar:1.0')).toEqual({ kind: 'oci-archive', file: '/tmp/a.tar', name: '1.0' });
    expect(parseArchiveReference('docker-archive:/tmp/d.tar:lang/runtime:1.0')).toEqual({
      kind: 'docker-archive',
      file: '/tmp/d.tar',
      name: 'lang/runtime:1.0',
    });
    expect(parseArchiveReference('docker-archive:rel.tar').file).toBe(join(process.cwd(), 'rel.tar'));
    expect(() => parseArchiveReference('oci-archive:')).toThrow(InputError);
    expect(() => parseArchiveReference('oci-archive:/tmp/a.tar:')).toThrow(/incomplete/);
  });
});

describe('oci-archive', () => {
  it('resolves to the manifest skopeo reads from it, with the config of the layout it was made from', async () => {
    const fromLayout = (await resolveFrom(`oci:${layout}:1.0`)).image;
    const { image, store } = await resolveFrom(`oci-archive:${ociArchive}:1.0`);
    expect(image.reference).toBe(`oci-archive:${ociArchive}:1.0`);
    // skopeo rewrites the manifest it copies (it compresses plain layers): its reading of the archive is the oracle.
    const raw = skopeoRaw(`oci-archive:${ociArchive}:1.0`);
    expect(image.manifestDigest).toBe(sha256(raw));
    expect(image.layers).toEqual((JSON.parse(raw.toString('utf8')) as { layers: unknown }).layers);
    expect(image.configDigest).toBe(fromLayout.configDigest);
    for (const layer of image.layers) {
      const path = await store.blobPath(layer);
      expect(path).toContain(layer.digest.slice(7));
      expect(sha256(readFileSync(path))).toBe(layer.digest);
    }
  });

  it('names the tags it has when the tag is unknown, and refuses a gzip-compressed archive', async () => {
    const unknown = await failure(resolveFrom(`oci-archive:${ociArchive}:2.0`));
    expect(unknown).toBeInstanceOf(InputError);
    expect(unknown.message).toContain(`OCI archive ${ociArchive} has no image tagged "2.0"; tags: 1.0`);
    const gzipped = join(work, 'image-oci.tar.gz');
    writeFileSync(gzipped, gzipSync(readFileSync(ociArchive)));
    const compressed = await failure(resolveFrom(`oci-archive:${gzipped}`));
    expect(compressed.message).toContain('is gzip-compressed');
    expect(compressed.hint).toContain('gunzip');
  });

  it('reports a damaged blob as a VerificationError naming the archive', async () => {
    const files = layoutFiles(layout);
    const image = (await resolveFrom(`oci:${layout}:1.0`)).image;
    const top = `blobs/sha256/${image.layers[2]!.digest.slice(7)}`;
    const damaged = Buffer.from(files[top]!);
    damaged[600] = damaged[600]! ^ 0xff;
    const archive = await writeTar(join(work, 'damaged-oci.tar'), { ...files, [top]: damaged });
    const { store } = await resolveFrom(`oci-archive:${archive}`);
    const error = await failure(store.blobPath(image.layers[2]!));
    expect(error).toBeInstanceOf(VerificationError);
    expect(error.message).toContain(`image archive ${archive}`);
    expect(error.message).toContain(image.layers[2]!.digest);
  });

  it('tells a docker archive from an OCI archive', async () => {
    const error = await failure(resolveFrom(`oci-archive:${dockerArchive}`));
    expect(error.message).toContain('is it a docker-archive?');
  });
});

describe('docker-archive', () => {
  it('synthesizes a manifest with the config and uncompressed layers skopeo wrote', async () => {
    const fromLayout = (await resolveFrom(`oci:${layout}:1.0`)).image;
    for (const name of ['', ':lang/runtime:1.0', ':docker.io/lang/runtime:1.0']) {
      const { image, store } = await resolveFrom(`docker-archive:${dockerArchive}${name}`);
      expect(image.reference).toBe(`docker-archive:${dockerArchive}${name}`);
      expect(image.configDigest).toBe(fromLayout.configDigest);
      expect(image.manifest.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
      expect(image.layers.map((layer) => layer.digest)).toEqual(fromLayout.config.rootfs.diff_ids);
      expect(new Set(image.layers.map((layer) => layer.mediaType))).toEqual(new Set(['application/vnd.oci.image.layer.v1.tar']));
      for (const layer of image.layers) {
        const bytes = readFileSync(await store.blobPath(layer));
        expect(sha256(bytes)).toBe(layer.digest);
        expect(bytes.length).toBe(layer.size);
      }
    }
  });

  it('digests gzip layers, follows layer symlinks, and asks which of several images to use', async () => {
    const one = await dockerImage('one', true);
    const two = await dockerImage('two', false);
    const archive = await writeTar(join(work, 'two-images.tar'), {
      ...one.files,
      ...two.files,
      // docker save links a layer shared by several images to the first copy.
      'shared/layer.tar': '->../two/layer.tar',
      'manifest.json': JSON.stringify([one.entry, { ...two.entry, Layers: ['shared/layer.tar'] }]),
    });
    const ambiguous = await failure(resolveFrom(`docker-archive:${archive}`));
    expect(ambiguous.message).toContain(`holds 2 images; name one: docker-archive:${archive}:docker.io/example/one:1`);

    const { image, store } = await resolveFrom(`docker-archive:${archive}:example/one:1`);
    expect(image.layers).toEqual([{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(one.blob), size: one.blob.length }]);
    expect(gunzipSync(readFileSync(await store.blobPath(image.layers[0]!))).equals(one.layer)).toBe(true);

    const linked = await resolveFrom(`docker-archive:${archive}:example/two:1`);
    expect(readFileSync(await linked.store.blobPath(linked.image.layers[0]!)).equals(two.layer)).toBe(true);

    const missing = await failure(resolveFrom(`docker-archive:${archive}:example/three:1`));
    expect(missing.message).toContain('holds no image named docker.io/example/three:1');
  });

  it('reports a layer that does not match its diff_id, and a missing member', async () => {
    const image = await dockerImage('bad', false);
    const altered = Buffer.from(image.layer);
    altered[520] = altered[520]! ^ 0xff;
    const archive = await writeTar(join(work, 'bad-layer.tar'), {
      ...image.files,
      'bad/layer.tar': altered,
      'manifest.json': JSON.stringify([image.entry]),
    });
    const { image: resolved, store } = await resolveFrom(`docker-archive:${archive}`);
    const error = await failure(store.blobPath(resolved.layers[0]!));
    expect(error).toBeInstanceOf(VerificationError);
    expect(error.message).toContain(`image archive ${archive}: bad/layer.tar`);

    const incomplete = await writeTar(join(work, 'incomplete.tar'), { ...image.files, 'manifest.json': JSON.stringify([{ ...image.entry, Layers: ['gone/layer.tar'] }]) });
    const lacking = await failure(resolveFrom(`docker-archive:${incomplete}`));
    expect(lacking).toBeInstanceOf(InputError);
    expect(lacking.message).toContain(`image archive ${incomplete} lacks layer 1 (gone/layer.tar)`);
  });
});

describe('rampack build from archives', () => {
  let agent: string;

  beforeAll(async () => {
    agent = await buildTestAgent('x86_64');
  });

  async function build(image: string): Promise<{ records: CpioRecord[]; manifest: Manifest }> {
    const out = mkdtempSync(join(work, 'out-'));
    const result = await runRampack([
      'build', '--image', image, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1.0',
      '--out', out, '--cache', join(work, 'shared-cache'), '--compression', 'gzip', '--quiet',
    ], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
    const cpio = gunzipSync(readFileSync(join(out, manifest.images[0]!.file)));
    const records: CpioRecord[] = [];
    for await (const record of readNewcArchive(Readable.from([cpio]), { data: 'sha256' })) records.push(record);
    return { records, manifest };
  }

  /** Everything but image.json, which names the source. */
  function tree(records: CpioRecord[]): CpioRecord[] {
    return records.filter((record) => record.name !== 'etc/rampack/image.json');
  }

  it('builds the same tree from the layout, the oci-archive and the docker-archive', async () => {
    const fromLayout = await build(`oci:${layout}:1.0`);
    const fromOci = await build(`oci-archive:${ociArchive}:1.0`);
    const fromDocker = await build(`docker-archive:${dockerArchive}:lang/runtime:1.0`);
    const expected = tree(fromLayout.records);
    expect(expected.length).toBeGreaterThan(20);
    expect(tree(fromOci.records)).toEqual(expected);
    expect(tree(fromDocker.records)).toEqual(expected);

    const [layoutImage, ociImage, dockerImageBuilt] = [fromLayout, fromOci, fromDocker].map(({ manifest }) => manifest.images[0]!);
    expect(ociImage!.source).toEqual({
      reference: `oci-archive:${ociArchive}:1.0`,
      manifestDigest: sha256(skopeoRaw(`oci-archive:${ociArchive}:1.0`)),
      configDigest: layoutImage!.source.configDigest,
    });
    expect(dockerImageBuilt!.source.reference).toBe(`docker-archive:${dockerArchive}:lang/runtime:1.0`);
    expect(dockerImageBuilt!.source.configDigest).toBe(layoutImage!.source.configDigest);
  });
});
