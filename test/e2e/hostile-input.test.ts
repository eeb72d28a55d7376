/**
 * Hostile and odd input, as an attacker or a careless user gives it: oversized
 * documents from a real registry, an OCI layout and an image archive; files
 * that never end; temporaries a killed build left; values that would escape
 * --out or forge log lines; YAML alias bombs; a reader that goes away. Every
 * case must end with its documented exit class, one readable error line and no
 * stack trace.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, truncateSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTestAgent } from '../helpers/agent.ts';
import { REPO_ROOT, runRampack, type CliResult } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { TAR_END, tarHeader, writeBlob, writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { testDirectory } from '../helpers/temp.ts';

const MiB = 1024 * 1024;
const HUGE = 100 * MiB;
const INDEX_TYPE = 'application/vnd.oci.image.index.v1+json';
const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
const CONFIG_TYPE = 'application/vnd.oci.image.config.v1+json';

const work = testDirectory('hostile');
let agent: string;
let layout: string;
let registry: RunningRegistry;

/** The failure is what the class says: that exit code, an error line naming the problem, no stack trace. */
function expectFailure(result: CliResult, code: number, message: string | RegExp): void {
  expect(result.stderr).toMatch(typeof message === 'string' ? new RegExp(message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : message);
  expect(result.stderr).not.toMatch(/\n\s+at |internal error|TypeError|ReadableStream/);
  expect(result.code).toBe(code);
}

function build(image: string, out: string, ...extra: string[]): Promise<CliResult> {
  return runRampack(['build', '--image', image, '--agent', agent, '--language', 'lang', '--version', '1', '--arch', 'x86_64', '--out', out, '--cache', join(work, 'cache'), ...extra]);
}

/** sha256 of `size` zero bytes, hashed in pieces. */
function zerosDigest(size: number): string {
  const hash = createHash('sha256');
  const piece = Buffer.alloc(MiB);
  for (let left = size; left > 0; left -= piece.length) hash.update(piece.subarray(0, Math.min(left, piece.length)));
  return `sha256:${hash.digest('hex')}`;
}

/** An OCI layout whose image config is a 100 MiB file (sparse); `claimed` is the size its descriptor gives. */
async function layoutWithHugeConfig(dir: string, claimed: number): Promise<string> {
  const digest = zerosDigest(HUGE);
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const configPath = join(dir, 'blobs', 'sha256', digest.slice(7));
  writeFileSync(configPath, '');
  truncateSync(configPath, HUGE);
  const manifest = { schemaVersion: 2, mediaType: MANIFEST_TYPE, config: { mediaType: CONFIG_TYPE, digest, size: claimed }, layers: [] };
  const top = await writeBlob(dir, Buffer.from(JSON.stringify(manifest)), MANIFEST_TYPE);
  writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...top, annotations: { 'org.opencontainers.image.ref.name': '1.0' } }] }));
  return `oci:${dir}:1.0`;
}

/** A docker-archive whose config.json member is 100 MiB of zeros (a hole in the file). */
function archiveWithHugeConfig(file: string): string {
  const manifest = Buffer.from(JSON.stringify([{ Config: 'config.json', RepoTags: ['lang:1'], Layers: [] }]));
  const descriptor = openSync(file, 'w');
  let offset = 0;
  const append = (data: Buffer) => (offset += writeSync(descriptor, data, 0, data.length, offset));
  append(tarHeader({ name: 'manifest.json', size: manifest.length }));
  append(Buffer.concat([manifest, Buffer.alloc(512 - (manifest.length % 512))]));
  append(tarHeader({ name: 'config.json', size: HUGE }));
  offset += HUGE;
  append(TAR_END);
  closeSync(descriptor);
  return `docker-archive:${file}`;
}

/** PUTs a manifest into the registry under `tag`; returns its descriptor. */
async function putManifest(tag: string, mediaType: string, document: object): Promise<{ mediaType: string; digest: string; size: number }> {
  const bytes = Buffer.from(JSON.stringify(document));
  const put = await fetch(`${registry.url}/v2/lang/runtime/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType }, body: bytes });
  expect(put.status).toBe(201);
  return { mediaType, digest: put.headers.get('docker-content-digest')!, size: bytes.length };
}

beforeAll(async () => {
  agent = await buildTestAgent('x86_64');
  layout = join(work, 'layout');
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  registry = await startRegistry();
  await pushLayout(layout, '1.0', registry.host, 'lang/runtime');
}, 120_000);

afterAll(async () => {
  await registry?.stop();
});

describe('documents over their size limit', () => {
  it('a registry manifest larger than its descriptor says is one error line, no crash', async () => {
    const original = await fetch(`${registry.url}/v2/lang/runtime/manifests/1.0`, { headers: { accept: MANIFEST_TYPE } });
    const manifest = { ...((await original.json()) as object), annotations: { padding: 'x'.repeat(3 * MiB) } };
    const big = await putManifest('big', MANIFEST_TYPE, manifest);
    const amd64 = { os: 'linux', architecture: 'amd64' };
    // The registry refuses manifests over 4 MiB; one that says it is smaller than it is takes the same path in rampack.
    await putManifest('understated', INDEX_TYPE, { schemaVersion: 2, mediaType: INDEX_TYPE, manifests: [{ ...big, size: 1000, platform: amd64 }] });
    const understated = `${registry.host}/lang/runtime:understated`;
    expectFailure(await build(understated, join(work, 'out-big')), 5, `manifest ${big.digest} of image ${understated}: the registry sent more than the expected 1000 bytes`);
    expectFailure(await runRampack(['inspect', understated, '--cache', join(work, 'cache')]), 5, 'the registry sent more than the expected 1000 bytes');
    await putManifest('overlimit', INDEX_TYPE, { schemaVersion: 2, mediaType: INDEX_TYPE, manifests: [{ ...big, size: 5 * MiB, platform: amd64 }] });
    expectFailure(await build(`${registry.host}/lang/runtime:overlimit`, join(work, 'out-big')), 3, 'is 5242880 bytes, too large for a manifest or index (limit 4.0 MiB)');
  });

  it('an OCI layout config of 100 MiB is refused by its descriptor, or by its file when the descriptor lies', async () => {
    const claimed = await layoutWithHugeConfig(join(work, 'huge-layout'), HUGE);
    expectFailure(await build(claimed, join(work, 'out-layout')), 3, /is 104857600 bytes, too large for an image config \(limit 16\.0 MiB\)/);
    const lying = await layoutWithHugeConfig(join(work, 'lying-layout'), 100);
    expectFailure(await build(lying, join(work, 'out-layout')), 3, /is 100\.0 MiB, over the size limit of 16\.0 MiB/);
  });

  it('a docker-archive config of 100 MiB is refused before it is read', async () => {
    const reference = archiveWithHugeConfig(join(work, 'huge.tar'));
    expectFailure(await build(reference, join(work, 'out-archive')), 3, /the image config in image archive .* is 104857600 bytes, too large for an image config/);
  });
});

describe('input files', () => {
  it('an agent that is a device, a FIFO, a directory or a 10 GiB sparse file is refused, naming it and the limit', async () => {
    const fifo = join(work, 'agent.fifo');
    spawnSync('mkfifo', [fifo]);
    const sparse = join(work, 'agent.sparse');
    writeFileSync(sparse, '');
    truncateSync(sparse, 10 * 1024 * MiB);
    const image = `oci:${layout}:1.0`;
    const withAgent = (path: string) => runRampack(['build', '--image', image, '--agent', path, '--language', 'lang', '--version', '1', '--arch', 'x86_64', '--out', join(work, 'out-agent')]);
    expectFailure(await withAgent('/dev/zero'), 3, 'x86_64 agent /dev/zero is a character device');
    expectFailure(await withAgent(fifo), 3, `x86_64 agent ${fifo} is a FIFO`);
    expectFailure(await withAgent(work), 3, `x86_64 agent ${work} is a directory`);
    expectFailure(await withAgent(sparse), 3, `x86_64 agent ${sparse} is 10.0 GiB, over the size limit of 256.0 MiB`);
  });

  it('a recipe, a manifest and a key from /dev/zero are refused', async () => {
    expectFailure(await runRampack(['plan', '/dev/zero']), 3, 'recipe /dev/zero is a character device');
    expectFailure(await runRampack(['manifest', 'verify', '/dev/zero']), 3, 'manifest /dev/zero is a character device');
    expectFailure(await runRampack(['manifest', 'verify', join(REPO_ROOT, 'package.json'), '--key', '/dev/zero']), 3, 'key /dev/zero is a character device');
    expectFailure(await runRampack(['inspect', `${registry.host}/lang/runtime:1.0`, '--ca-file', '/dev/zero']), 3, 'CA file /dev/zero is a character device');
  });
});

describe('exit classes of user mistakes', () => {
  it('a YAML alias bomb in a recipe is an input error', async () => {
    const levels = Array.from({ length: 12 }, (_, i) => `l${i + 1}: &l${i + 1} [${Array(10).fill(`*l${i}`).join(', ')}]`);
    const recipe = join(work, 'bomb.yaml');
    writeFileSync(recipe, ['language: bomb', 'image: oci:x', 'versions: [{version: "1"}]', 'x-0: &l0 "lol"', ...levels.map((line) => line.replace(/^l/, 'x-'))].join('\n'));
    const result = await runRampack(['plan', recipe]);
    expectFailure(result, 3, `recipe ${recipe}: Excessive alias count`);
  });

  it('--out or --cache naming a file is an input error', async () => {
    const file = join(work, 'a-file');
    writeFileSync(file, 'not a directory');
    expectFailure(await build(`oci:${layout}:1.0`, file), 3, `--out ${file} is (or is inside) a file, not a directory`);
    expectFailure(await build(`oci:${layout}:1.0`, join(file, 'below')), 3, `--out ${join(file, 'below')} is (or is inside) a file`);
    const cached = await runRampack(['build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--language', 'lang', '--version', '1', '--out', join(work, 'out-c'), '--cache', file]);
    expectFailure(cached, 3, `--cache ${file} is (or is inside) a file`);
  });

  it('publish --to or manifest merge --out naming the wrong kind of path is an input error', async () => {
    const out = join(work, 'out-publish');
    expect((await build(`oci:${layout}:1.0`, out)).code).toBe(0);
    const file = join(work, 'a-file');
    writeFileSync(file, 'not a directory');
    const manifest = join(out, 'manifest.json');
    expectFailure(await runRampack(['publish', manifest, '--to', join(file, 'site')]), 3, `--to ${join(file, 'site')} is (or is inside) a file`);
    expectFailure(await runRampack(['manifest', 'merge', manifest, '--out', work]), 3, `--out ${work} is a directory`);
  });

  it.each([
    ['--language', '../../escaped', '../../escaped'],
    ['--language', '/abs', '/abs'],
    ['--language', 'a/b', 'a/b'],
    ['--version', '../../../escaped', '../../../escaped'],
    ['--version', 'a newline and a forged log line', '1\n2025-01-01T00:00:00.000Z info forged'],
    ['--version', '100,000 characters', 'v'.repeat(100_000)],
  ])('%s %s is refused by the recipe field rule, and nothing is written', async (flag, _label, value) => {
    const out = join(work, 'flags', 'out');
    const args = ['build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1', '--out', out];
    args[args.indexOf(flag) + 1] = value;
    const result = await runRampack(args);
    expectFailure(result, 2, `${flag} `);
    expect(result.stderr).toContain('must match pattern');
    expect(existsSync(join(work, 'flags'))).toBe(false);
    expect(existsSync(join(work, 'escaped'))).toBe(false);
    for (const line of result.stderr.split('\n')) expect(line.length).toBeLessThan(1100);
    expect(result.stderr.split('\n').filter((line) => line.includes('info forged'))).toHaveLength(value.includes('forged') ? 1 : 0);
  });

  it('a 100 KB path and control characters are echoed on one bounded line, escaped', async () => {
    const long = join(work, 'p'.repeat(100_000));
    const long_ = await runRampack(['inspect', long]);
    expect(long_.code).toBe(3);
    const lines = long_.stderr.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^rampack: error: .*characters left out.*ENAMETOOLONG|^rampack: error: .*characters left out/);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(1100);
    const control = await runRampack(['plan', join(work, 'a\nrampack: hint: forged\x1b[31m')]);
    expect(control.code).toBe(3);
    expect(control.stderr).toContain('a\\nrampack: hint: forged\\u001b[31m');
    expect(control.stderr.split('\n').filter((line) => line.startsWith('rampack: hint: forged'))).toHaveLength(0);
  });
});

describe('errors that name what they are about', () => {
  it('an owner newc cannot hold names its layer and its image', async () => {
    const dir = join(work, 'big-uid');
    const tar = Buffer.concat([tarHeader({ name: 'etc/owned', uid: 2 ** 33, size: 0 }), TAR_END]);
    await writeOciLayout(dir, { layers: [{ tar, compression: 'none' }] }, '1.0');
    const diffId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
    const result = await build(`oci:${dir}:1.0`, join(work, 'out-uid'));
    expectFailure(result, 3, `image oci:${dir}:1.0: layer ${diffId}: uid 8589934592 of "etc/owned" does not fit in newc's 32-bit field`);
  });
});

describe('temporaries left by a killed build', () => {
  it('the next build removes those of dead writers (or a day old) and keeps a live writer\'s', async () => {
    const out = join(work, 'out-stale');
    mkdirSync(join(out, 'fragments'), { recursive: true });
    const exited = spawnSync(process.execPath, ['-e', '']);
    const deadPid = exited.pid!;
    const dead = `.lang-1-x86_64.cpio.gz.${deadPid}.0123abcd.tmp`;
    const deadFragment = `.lang-1-x86_64.json.${deadPid}.89abcdef.tmp`;
    const live = `.lang-1-x86_64.cpio.gz.${process.pid}.0123abcd.tmp`;
    const old = `.manifest.json.${process.pid}.fedcba98.tmp`;
    const notOurs = `.lang.${deadPid}.tmp`;
    for (const name of [dead, live, old, notOurs]) writeFileSync(join(out, name), 'partial');
    writeFileSync(join(out, 'fragments', deadFragment), 'partial');
    const twoDaysAgo = (Date.now() - 2 * 24 * 3600 * 1000) / 1000;
    utimesSync(join(out, old), twoDaysAgo, twoDaysAgo);
    const result = await build(`oci:${layout}:1.0`, out);
    expect(result.code).toBe(0);
    const names = readdirSync(out);
    expect(names).not.toContain(dead);
    expect(names).not.toContain(old);
    expect(names).toContain(live);
    expect(names).toContain(notOurs);
    expect(readdirSync(join(out, 'fragments'))).toEqual([]);
    expect(names).toContain('lang-1-x86_64.cpio.gz');
  });
});

describe('a reader that goes away', () => {
  /** Runs the CLI with its stdout read end closed at once: the first write meets EPIPE. */
  function withClosedStdout(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(REPO_ROOT, 'src', 'cli', 'main.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk) => (stderr += chunk));
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code, signal, stderr }));
    });
  }

  it.each([
    [['inspect', '--help']],
    [['build', '--help']],
    [['--help']],
    [['completion', 'bash']],
    [['--version']],
  ])('rampack %j | head exits quietly', async (args) => {
    const result = await withClosedStdout(args);
    expect(result.stderr).not.toMatch(/EPIPE|\n\s+at /);
    expect(result.signal).toBeNull();
    expect(result.code).toBe(0);
  });

  it('through the launcher (bin/rampack.js) and a shell pipe too', async () => {
    const launcher = join(REPO_ROOT, 'bin', 'rampack.js');
    const result = spawnSync('bash', ['-c', `set -o pipefail; ${JSON.stringify(process.execPath)} ${JSON.stringify(launcher)} inspect --help | true`], { encoding: 'utf8' });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });
});
