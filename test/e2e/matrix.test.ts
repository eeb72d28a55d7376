/**
 * The CI flow on one machine: `rampack plan --json` -> one `rampack build
 * --only KEY` process per cell, all at once, sharing one blob cache ->
 * `rampack manifest merge` -> sign -> verify -> publish, against a loopback
 * registry holding a multi-arch language image and a multi-arch agent image.
 */
import { listWithBsdtar, readWithBsdtar } from '../helpers/initramfs.ts';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { loadVerifyKey, verifySignatures } from '../../src/manifest/sign.ts';
import { artifactLayers } from '../../src/publish/registry.ts';
import type { PlanCell } from '../../src/recipe/plan.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout, type ImageSpec } from '../helpers/oci-builder.ts';
import { pushLayout, skopeoRawManifest, startRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let registry: Awaited<ReturnType<typeof startRegistry>>;
const agents: Record<string, Buffer> = {};

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The agent published as an image: one platform per arch, the binary at /usr/bin/agent. */
function agentImageSpec(architecture: string, binary: Buffer): ImageSpec {
  return { architecture, layers: [{ entries: [{ name: 'usr/bin/agent', content: binary, mode: 0o755 }], compression: 'gzip' }] };
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.bsdtar, TOOLS.musl, TOOLS.aarch64Gcc, TOOLS.aarch64Libc);
  work = mkdtempSync(join(tmpdir(), 'rampack-matrix-'));
  registry = await startRegistry();
  agents.x86_64 = readFileSync(await buildTestAgent('x86_64'));
  agents.aarch64 = readFileSync(await buildTestAgent('aarch64'));
  for (const tag of ['1.0', '2.0']) {
    await writeOciLayout(join(work, `lang-${tag}`), [languageImageSpec('amd64'), languageImageSpec('arm64')], tag);
    await pushLayout(join(work, `lang-${tag}`), tag, registry.host, 'library/lang', { all: true });
  }
  await writeOciLayout(join(work, 'agent'), [agentImageSpec('amd64', agents.x86_64), agentImageSpec('arm64', agents.aarch64)], 'v1');
  await pushLayout(join(work, 'agent'), 'v1', registry.host, 'tools/agent', { all: true });
  writeFileSync(join(work, 'motd'), 'built by the matrix\n');
  writeFileSync(
    join(work, 'lang.yaml'),
    `language: lang
image: ${registry.host}/library/lang
versions:
  - {version: "2.0", default: true}
  - {version: "1.0"}
agent: {image: "${registry.host}/tools/agent:v1", path: /usr/bin/agent}
files: [{source: ${join(work, 'motd')}, destination: /etc/motd, mode: "0444"}]
drop: [usr/share/doc/**, var/cache/**]
`,
  );
}, 180_000);

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('plan -> parallel builds -> merge -> sign -> verify', () => {
  let cells: PlanCell[];
  const out = () => join(work, 'out');

  it('plans one cell per version and arch, as a GitHub Actions matrix', async () => {
    const result = await runRampack(['plan', '--json', join(work, 'lang.yaml')]);
    expect(result.code).toBe(0);
    cells = (JSON.parse(result.stdout) as { include: PlanCell[] }).include;
    expect(cells.map((cell) => cell.key)).toEqual(['lang-2.0-x86_64', 'lang-2.0-aarch64', 'lang-1.0-x86_64', 'lang-1.0-aarch64']);
  });

  it('builds every cell in its own process at once, each writing only its fragment', async () => {
    const cache = join(work, 'cache');
    const results = await Promise.all(
      cells.map((cell) => runRampack(['build', join(work, 'lang.yaml'), '--only', cell.key, '--out', out(), '--cache', cache, '--verbose'])),
    );
    for (const result of results) {
      expect(result.stderr).not.toContain('error');
      expect(result.code).toBe(0);
      expect(result.stderr).toMatch(/drop removed \d+ entries, \d+ bytes of file data saved/);
    }
    expect(readdirSync(join(out(), 'fragments')).sort()).toEqual(cells.map((cell) => `${cell.key}.json`).sort());
    expect(readdirSync(out())).not.toContain('manifest.json');
  }, 300_000);

  it('merges the fragments into one manifest that carries the planned input digests and the agent from the image', async () => {
    const fragments = readdirSync(join(out(), 'fragments')).map((name) => join(out(), 'fragments', name));
    const result = await runRampack(['manifest', 'merge', ...fragments, '--out', join(out(), 'manifest.json')]);
    expect(result.code).toBe(0);
    const manifest = JSON.parse(readFileSync(join(out(), 'manifest.json'), 'utf8')) as Manifest;
    expect(manifest.images.map((image) => `${image.version}/${image.arch}/${image.default}`)).toEqual([
      '1.0/aarch64/false', '1.0/x86_64/false', '2.0/aarch64/true', '2.0/x86_64/true',
    ]);
    for (const image of manifest.images) {
      const cell = cells.find((c) => c.key === `lang-${image.version}-${image.arch}`)!;
      expect(image.inputDigest).toBe(cell.inputDigest);
      expect(image.agent.sha256).toBe(sha256(agents[image.arch]!));
    }
    const file = join(out(), manifest.images[0]!.file);
    expect(readWithBsdtar(file, 'etc/motd').toString()).toBe('built by the matrix\n');
    const listing = listWithBsdtar(file);
    expect(listing).toMatch(/^-r--r--r-- .* etc\/motd$/m);
    expect(listing).not.toContain('var/cache/lang');
  });

  it('refuses to merge a fragment that conflicts with another', async () => {
    const fragment = join(out(), 'fragments', 'lang-2.0-x86_64.json');
    const spoiled = join(work, 'spoiled.json');
    writeFileSync(spoiled, readFileSync(fragment, 'utf8').replace(/"size": \d+/, '"size": 1'));
    const result = await runRampack(['manifest', 'merge', fragment, spoiled, '--out', join(work, 'never.json')]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`fragments ${fragment} and ${spoiled} both hold lang 2.0 x86_64`);
  });

  it('signs and verifies the merged manifest, then publishes it', async () => {
    const key = join(work, 'ci.key');
    const pub = join(work, 'ci.pub');
    const manifest = join(out(), 'manifest.json');
    expect((await runRampack(['keygen', '--private', key, '--public', pub])).code).toBe(0);
    expect((await runRampack(['manifest', 'sign', manifest, '--key', key])).code).toBe(0);
    const verified = await runRampack(['manifest', 'verify', manifest, '--key', pub]);
    expect(verified.stderr).toContain('signature valid, 4 files match');
    expect(verified.code).toBe(0);
    const site = join(work, 'site');
    expect((await runRampack(['publish', manifest, '--to', site, '--key', key])).code).toBe(0);
    expect((await runRampack(['manifest', 'verify', join(site, 'manifest.json'), '--key', pub])).code).toBe(0);
  });

  it('publishes to the registry as one artifact: manifest, signature and initramfs files as annotated layers', async () => {
    const key = join(work, 'ci.key');
    const manifest = join(out(), 'manifest.json');
    const reference = `${registry.host}/initramfs/lang:stable`;
    const result = await runRampack(['publish', manifest, '--registry', reference, '--key', key]);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    const raw = await skopeoRawManifest(reference);
    expect(JSON.parse(result.stdout).digest).toBe(`sha256:${sha256(raw)}`);
    const artifact = JSON.parse(raw.toString()) as { artifactType: string; layers: Array<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }> };
    expect(artifact.artifactType).toBe('application/vnd.rampack.manifest.v1+json');
    const { manifest: document, signature, initramfs: files } = artifactLayers(artifact, reference);
    expect([document.mediaType, signature!.mediaType]).toEqual(['application/vnd.rampack.manifest.v1+json', 'application/vnd.rampack.manifest.signature.v1+json']);
    const blob = async (digest: string) => Buffer.from(await (await fetch(`${registry.url}/v2/initramfs/lang/blobs/${digest}`)).arrayBuffer());
    const publishedBytes = await blob(document.digest);
    verifySignatures(publishedBytes, (await blob(signature!.digest)).toString(), [await loadVerifyKey(join(work, 'ci.pub'))], 'published manifest');
    const published = JSON.parse(publishedBytes.toString()) as Manifest;
    expect(files.map((layer) => layer.annotations!['dev.rampack.version'] + '/' + layer.annotations!['dev.rampack.arch'])).toEqual(
      published.images.map((image) => `${image.version}/${image.arch}`),
    );
    const first = published.images[0]!;
    expect(files[0]).toMatchObject({ mediaType: 'application/vnd.rampack.initramfs.v1.cpio+gzip', digest: `sha256:${first.sha256}` });
    expect(sha256(await blob(files[0]!.digest))).toBe(first.sha256);
  });
});
