/**
 * Registry mirrors, end to end: `rampack build` against real `docker-registry`
 * processes playing the upstream registry and its mirrors, with recording
 * proxies to see who was asked.
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, UsageError } from '../../src/errors.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { loadConfigMirrors, mergeMirrors, mirrorsFromFlags, parseMirrorFlag } from '../../src/registry/mirrors.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startProxy, startRegistry, type RecordingProxy, type RunningRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

let work: string;
let agent: string;
let upstream: RunningRegistry;
let emptyMirror: RunningRegistry;
let fullMirror: RunningRegistry;
const running: { stop(): Promise<void> }[] = [];

async function proxy(target: RunningRegistry): Promise<RecordingProxy> {
  const started = await startProxy(target.host);
  running.push(started);
  return started;
}

/** A loopback port nothing listens on: a mirror that is down. */
async function deadOrigin(): Promise<string> {
  const gone = await startRegistry();
  await gone.stop();
  return gone.url;
}

async function build(image: string, extra: string[], env: NodeJS.ProcessEnv = {}) {
  const out = mkdtempSync(join(work, 'out-'));
  const result = await runRampack(
    ['build', '--image', image, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1.0', '--out', out,
      '--cache', mkdtempSync(join(work, 'cache-')), ...extra],
    // No machine config or Docker logins may leak in.
    { env: { XDG_CONFIG_HOME: mkdtempSync(join(work, 'xdg-')), DOCKER_CONFIG: mkdtempSync(join(work, 'docker-')), ...env } },
  );
  const manifest = result.code === 0 ? (JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest) : undefined;
  return { ...result, manifest };
}

const manifestRequests = (recorder: RecordingProxy) => recorder.requests.filter((request) => request.path.includes('/manifests/'));

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.musl);
  work = mkdtempSync(join(tmpdir(), 'rampack-mirror-test-'));
  agent = await buildTestAgent('x86_64');
  const layout = join(work, 'layout');
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  [upstream, emptyMirror, fullMirror] = await Promise.all([startRegistry(), startRegistry(), startRegistry()]);
  await Promise.all([pushLayout(layout, '1.0', upstream.host, 'library/lang'), pushLayout(layout, '1.0', fullMirror.host, 'library/lang')]);
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  await Promise.all([upstream, emptyMirror, fullMirror].map((registry) => registry?.stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('mirror settings', () => {
  it('parses REGISTRY=URL flags, folding Docker Hub aliases and keeping the order', () => {
    expect(parseMirrorFlag('index.docker.io=http://127.0.0.1:5000/')).toEqual(['docker.io', 'http://127.0.0.1:5000']);
    const mirrors = mirrorsFromFlags(['docker.io=https://a.example', 'ghcr.io=https://c.example', 'docker.io=https://b.example']);
    expect([...mirrors]).toEqual([['docker.io', ['https://a.example', 'https://b.example']], ['ghcr.io', ['https://c.example']]]);
    expect(() => parseMirrorFlag('http://127.0.0.1:5000')).toThrow(UsageError);
    expect(() => parseMirrorFlag('docker.io=http://mirror/v2/')).toThrow(/bare origin/);
    expect(() => parseMirrorFlag('docker.io=ftp://mirror')).toThrow(/http:\/\/ or https:\/\//);
  });

  it('reads registryMirrors from a config file; flags replace its list for their registry', async () => {
    const file = join(work, 'config.yaml');
    writeFileSync(file, 'registryMirrors:\n  docker.io: [http://127.0.0.1:5000]\n  quay.io:\n    - https://quay-mirror.example\n');
    const fromFile = await loadConfigMirrors(file);
    expect([...fromFile]).toEqual([['docker.io', ['http://127.0.0.1:5000']], ['quay.io', ['https://quay-mirror.example']]]);
    const merged = mergeMirrors(fromFile, mirrorsFromFlags(['docker.io=http://127.0.0.1:6000']));
    expect(merged.get('docker.io')).toEqual(['http://127.0.0.1:6000']);
    expect(merged.get('quay.io')).toEqual(['https://quay-mirror.example']);

    writeFileSync(file, 'registryMirror:\n  docker.io: [http://127.0.0.1:5000]\n');
    await expect(loadConfigMirrors(file)).rejects.toThrow(/unknown key "registryMirror"/);
    writeFileSync(file, 'registryMirrors:\n  docker.io: http://127.0.0.1:5000\n');
    await expect(loadConfigMirrors(file)).rejects.toThrow(InputError);
    await expect(loadConfigMirrors(join(work, 'missing.yaml'))).rejects.toThrow(/cannot read config file/);
  });
});

describe('rampack build through mirrors', () => {
  it('falls back to the registry when the mirror lacks the image, recording the registry reference', async () => {
    const registry = await proxy(upstream);
    const mirror = await proxy(emptyMirror);
    const image = `${registry.host}/library/lang:1.0`;
    const result = await build(image, ['--registry-mirror', `${registry.host}=${mirror.url}`]);
    expect(result.stderr).toContain(`mirror ${mirror.url} failed for ${image}`);
    expect(result.code).toBe(0);
    expect(result.manifest!.images[0]!.source.reference).toBe(image);
    expect(manifestRequests(mirror)).toHaveLength(1);
    expect(manifestRequests(registry).length).toBeGreaterThan(0);
  });

  it('never contacts the registry when the mirror has the image', async () => {
    const registry = await proxy(upstream);
    const mirror = await proxy(fullMirror);
    const image = `${registry.host}/library/lang:1.0`;
    const result = await build(image, ['--registry-mirror', `${registry.host}=${mirror.url}`]);
    expect(result.code).toBe(0);
    expect(result.manifest!.images[0]!.source.reference).toBe(image);
    expect(registry.requests).toEqual([]);
    expect(mirror.requests.filter((request) => request.path.includes('/blobs/')).length).toBeGreaterThan(0);
  });

  it('mirrors docker.io from the default config file, skipping a mirror that is down', async () => {
    const xdg = mkdtempSync(join(work, 'xdg-'));
    mkdirSync(join(xdg, 'rampack'));
    const mirror = await proxy(fullMirror);
    const dead = await deadOrigin();
    writeFileSync(join(xdg, 'rampack', 'config.yaml'), `registryMirrors:\n  docker.io:\n    - ${dead}\n    - ${mirror.url}\n`);
    const result = await build('lang:1.0', [], { XDG_CONFIG_HOME: xdg });
    expect(result.stderr).toContain(`mirror ${dead} failed for docker.io/library/lang:1.0`);
    expect(result.code).toBe(0);
    const { source } = result.manifest!.images[0]!;
    expect(source.reference).toBe('docker.io/library/lang:1.0');
    expect(manifestRequests(mirror).map((request) => request.path)).toContain('/v2/library/lang/manifests/1.0');
  });

  it('rejects a malformed mirror flag (exit 2) and a bad config file (exit 3)', async () => {
    const flag = await build('lang:1.0', ['--registry-mirror', 'docker.io']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('--registry-mirror takes REGISTRY=URL');
    const file = join(work, 'bad-config.yaml');
    writeFileSync(file, 'registryMirrors: [http://127.0.0.1:5000]\n');
    const config = await build('lang:1.0', ['--config', file]);
    expect(config.code).toBe(3);
    expect(config.stderr).toContain(`config file ${file}: registryMirrors must map registry names to lists of URLs`);
  });
});
