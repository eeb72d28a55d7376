/**
 * The npm package as a user gets it: `npm pack`, installed into an empty
 * project (from the local npm cache where it can), its native addons built
 * by the install script with the system compiler, then `npx rampack` builds
 * an image from a generated OCI layout. Also: an install without a compiler
 * says what is missing and rampack still works, and the launcher started by
 * an older Node on PATH finds the Node of the `node` package.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TOOL_VERSION } from '../../src/version.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { REPO_ROOT } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const run = promisify(execFile);
/** npm and the builds it runs are bounded too: a stuck install fails the test instead of hanging the file. */
const BOUNDS = { timeout: 240_000, killSignal: 'SIGKILL' as const, maxBuffer: 16 * 1024 * 1024 };

let work: string;
let project: string;
let installLog: string;

/** The environment of a user's shell: no npm lifecycle variables of the test run, the repository's node_modules/.bin not on PATH. */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('npm_')));
  const path = (env.PATH ?? '').split(delimiter).filter((dir) => !dir.includes('node_modules'));
  return { ...env, PATH: path.join(delimiter), ...extra };
}

function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = userEnv()) {
  return run('npm', args, { cwd, env, ...BOUNDS });
}

beforeAll(async () => {
  ensureTools(TOOLS.gcc, TOOLS.libdeflate, TOOLS.isal, TOOLS.musl);
  work = mkdtempSync(join(tmpdir(), 'rampack-package-'));
  // npm pack runs `prepare` (tsc and the addons of the checkout), as a publish would.
  await npm(['pack', '--pack-destination', work], REPO_ROOT);
  const tarball = readdirSync(work).find((name) => /^rampack-.*\.tgz$/.test(name));
  expect(tarball).toBeDefined();
  project = join(work, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  const { stdout, stderr } = await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', join(work, tarball!)], project);
  installLog = stdout + stderr;
}, 600_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const installed = () => join(project, 'node_modules', 'rampack');

describe('the npm package installed into an empty project', () => {
  it('ships the addon sources, not binaries built elsewhere, and builds them at install time', () => {
    expect(existsSync(join(installed(), 'native', 'deflate.c'))).toBe(true);
    expect(existsSync(join(installed(), 'src'))).toBe(false);
    expect(installLog).toMatch(/build-native: built .*deflate\.node \(libdeflate/);
    expect(installLog).toMatch(/build-native: built .*inflate\.node \(ISA-L/);
    expect(readdirSync(join(installed(), 'dist', 'native')).sort()).toEqual(['deflate.node', 'inflate.node']);
  });

  it('runs `npx rampack --version` and builds an image from an OCI layout with the addons', async () => {
    const version = await run('npx', ['rampack', '--version'], { cwd: project, env: userEnv(), ...BOUNDS });
    expect(version.stdout.trim()).toBe(TOOL_VERSION);

    const layout = join(work, 'layout');
    await writeOciLayout(layout, languageImageSpec(), '1.0');
    const agent = await buildTestAgent('x86_64');
    const out = join(work, 'out');
    const built = await run(
      'npx',
      ['rampack', 'build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1.0',
        '--out', out, '--cache', join(work, 'cache'), '--verbose', '--json'],
      { cwd: project, env: userEnv(), ...BOUNDS },
    );
    const result = JSON.parse(built.stdout) as { images: { path: string; size: number }[] };
    expect(result.images).toHaveLength(1);
    expect(existsSync(result.images[0]!.path)).toBe(true);
    // The gzip of shards went through the addon built at install time.
    expect(built.stderr).toContain('compressing with libdeflate');
  });

  it('says what is missing when the addons cannot be built, and rampack still runs without them', async () => {
    const rebuilt = await npm(['rebuild', 'rampack', '--foreground-scripts'], project, userEnv({ CC: 'false' }));
    const said = rebuilt.stdout + rebuilt.stderr;
    expect(said).toContain('build-native: libdeflate addon (gzip of shards) not built: no C compiler (cc)');
    expect(said).toContain('then `npm rebuild rampack`');
    rmSync(join(installed(), 'dist', 'native'), { recursive: true, force: true });
    const version = await run('npx', ['rampack', '--version'], { cwd: project, env: userEnv(), ...BOUNDS });
    expect(version.stdout.trim()).toBe(TOOL_VERSION);
  });

  it('runs from its bin link with the machine’s own Node on PATH (an older one re-runs under the `node` package’s)', async () => {
    const { stdout } = await run(join(project, 'node_modules', '.bin', 'rampack'), ['--version'], { env: userEnv(), ...BOUNDS });
    expect(stdout.trim()).toBe(TOOL_VERSION);
  });
});
