/**
 * Every ContentStore passes the one conformance check
 * (test/helpers/content-store-conformance.ts) on the same generated image:
 * the registry (Debian's docker-registry on loopback), a mirror in front of
 * it, an OCI layout, and oci-archive and docker-archive files written by
 * skopeo. A docker archive holds one platform (no index), so it serves the
 * image's amd64 half.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Cache } from '../../src/cache/cache.ts';
import type { Arch, ContentStore } from '../../src/oci/content.ts';
import { parseImageReference } from '../../src/oci/reference.ts';
import type { ImageConfig, ImageIndex, ImageManifest } from '../../src/oci/types.ts';
import { openMirroredStore } from '../../src/registry/mirrors.ts';
import { openRegistryStore, type RegistryOptions } from '../../src/registry/store.ts';
import { openArchiveStore, parseArchiveReference } from '../../src/sources/archive.ts';
import { OciLayoutStore, parseOciLayoutReference } from '../../src/sources/oci-layout.ts';
import { checkContentStore, type ExpectedImage } from '../helpers/content-store-conformance.ts';
import { writeOciLayout, type ImageSpec, type LayerCompression } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let upstream: RunningRegistry;
let mirror: RunningRegistry;
let multiLayout: string;
let multiArches: ExpectedImage['diffIds'];
let dockerArchive: string;
let amd64DiffIds: string[];
let ociArchive: string;

const spec = (architecture: string, second: LayerCompression): ImageSpec => ({
  architecture,
  layers: [
    { entries: [{ name: 'etc/', type: 'directory' }, { name: 'etc/os', content: `${architecture}\n` }], compression: 'gzip' },
    { entries: [{ name: 'app/run', content: `#!/bin/sh\necho ${architecture}\n`, mode: 0o755 }], compression: second },
    { entries: [{ name: 'app/data', content: 'plain\n' }], compression: 'none' },
  ],
});

/** Each arch's diff_ids, read from the layout the other stores were made from. */
function layoutDiffIds(dir: string, tag: string): ExpectedImage['diffIds'] {
  const blob = (digest: string) => JSON.parse(readFileSync(join(dir, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as unknown;
  const top = (blob((JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as ImageIndex).manifests.find(
    (entry) => entry.annotations?.['org.opencontainers.image.ref.name'] === tag,
  )!.digest)) as ImageIndex & ImageManifest;
  const children = top.manifests ?? [{ digest: '', platform: { architecture: 'amd64' } }];
  const result: ExpectedImage['diffIds'] = {};
  for (const child of children) {
    const manifest = (top.manifests ? blob(child.digest) : top) as ImageManifest;
    const arch: Arch = child.platform?.architecture === 'arm64' ? 'aarch64' : 'x86_64';
    result[arch] = (blob(manifest.config.digest) as ImageConfig).rootfs.diff_ids;
  }
  return result;
}

function skopeoCopy(from: string, to: string, all = false): void {
  execFileSync('skopeo', ['copy', '--quiet', '--insecure-policy', ...(all ? ['--all'] : []), from, to], { timeout: 120_000 });
}

function registryOptions(): RegistryOptions {
  // An empty Docker config: the machine's logins must not leak in.
  return { cache: new Cache(mkdtempSync(join(work, 'cache-'))), maxAttempts: 2, dockerConfigDir: mkdtempSync(join(work, 'docker-')) };
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo);
  work = mkdtempSync(join(tmpdir(), 'rampack-stores-'));
  multiLayout = join(work, 'multi');
  await writeOciLayout(multiLayout, [spec('amd64', 'zstd'), spec('arm64', 'zstd')], '2.0');
  multiArches = layoutDiffIds(multiLayout, '2.0');
  [upstream, mirror] = await Promise.all([startRegistry(), startRegistry()]);
  await Promise.all([
    pushLayout(multiLayout, '2.0', upstream.host, 'test/multi', { all: true }),
    pushLayout(multiLayout, '2.0', mirror.host, 'test/multi', { all: true }),
  ]);
  ociArchive = join(work, 'multi-oci.tar');
  skopeoCopy(`oci:${multiLayout}:2.0`, `oci-archive:${ociArchive}:2.0`, true);
  // Docker archives hold gzip layers of one platform.
  const gzipLayout = join(work, 'gzip');
  await writeOciLayout(gzipLayout, spec('amd64', 'gzip'), '1.0');
  amd64DiffIds = layoutDiffIds(gzipLayout, '1.0').x86_64!;
  dockerArchive = join(work, 'image-docker.tar');
  skopeoCopy(`oci:${gzipLayout}:1.0`, `docker-archive:${dockerArchive}:lang/runtime:1.0`);
});

afterAll(async () => {
  await Promise.all([upstream?.stop(), mirror?.stop()]);
  if (work) rmSync(work, { recursive: true, force: true });
});

interface Implementation {
  name: string;
  open: () => Promise<ContentStore> | ContentStore;
  expected: () => ExpectedImage;
}

const IMPLEMENTATIONS: Implementation[] = [
  {
    name: 'registry (src/registry/store.ts)',
    open: () => openRegistryStore(parseImageReference(`${upstream.host}/test/multi:2.0`), registryOptions()),
    expected: () => ({ reference: `${upstream.host}/test/multi:2.0`, diffIds: multiArches }),
  },
  {
    name: 'mirror in front of the registry (src/registry/mirrors.ts)',
    open: () => openMirroredStore(parseImageReference(`${upstream.host}/test/multi:2.0`), [mirror.url], registryOptions()),
    expected: () => ({ reference: `${upstream.host}/test/multi:2.0`, diffIds: multiArches }),
  },
  {
    name: 'OCI layout (src/sources/oci-layout.ts)',
    open: () => new OciLayoutStore(parseOciLayoutReference(`oci:${multiLayout}:2.0`)),
    expected: () => ({ reference: `oci:${multiLayout}:2.0`, diffIds: multiArches }),
  },
  {
    name: 'oci-archive (src/sources/archive.ts)',
    open: () => openArchiveStore(parseArchiveReference(`oci-archive:${ociArchive}:2.0`), new Cache(mkdtempSync(join(work, 'cache-')))),
    expected: () => ({ reference: `oci-archive:${ociArchive}:2.0`, diffIds: multiArches }),
  },
  {
    name: 'docker-archive (src/sources/archive.ts)',
    open: () => openArchiveStore(parseArchiveReference(`docker-archive:${dockerArchive}:lang/runtime:1.0`), new Cache(mkdtempSync(join(work, 'cache-')))),
    expected: () => ({ reference: `docker-archive:${dockerArchive}:lang/runtime:1.0`, diffIds: { x86_64: amd64DiffIds } }),
  },
];

describe('every ContentStore passes the conformance check', () => {
  it.each(IMPLEMENTATIONS)('$name', async ({ open, expected }) => {
    await checkContentStore(await open(), expected());
  });
});
