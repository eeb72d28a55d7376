/**
 * A property test of the command line: a few hundred command lines, drawn
 * from a fixed seed, over every command's flags and every recipe field, with
 * the values users and attackers give (path-like values, control characters,
 * huge values, unicode, empty strings, negative and huge numbers, devices,
 * FIFOs, directories). Whatever the input:
 * - the exit code is 0, 2 (usage) or 3 (input): no internal error (1), and no
 *   registry is contacted (4);
 * - nothing is written outside the directories the command line names for
 *   writing (--out, --cache, --to, keygen's files, ...);
 * - stderr holds no stack trace, no crash, and no line longer than the bound.
 * The cases run in one process through the CLI's entry point (test/helpers/cli-batch.ts).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { writeKeyPair } from '../../src/manifest/sign.ts';
import { TERMINAL_LINE_LIMIT } from '../../src/util/log.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import type { Batch, BatchCase, BatchResult } from '../helpers/cli-batch.ts';
import { REPO_ROOT } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { testDirectory } from '../helpers/temp.ts';
import { seededRandom } from '../helpers/random.ts';

/** RAMPACK_FUZZ_SEED explores other cases; a failure names its seed. */
const SEED = Number(process.env.RAMPACK_FUZZ_SEED ?? 13);
const CASES = Number(process.env.RAMPACK_FUZZ_CASES ?? 320);
/** A log line: timestamp, level and the message. */
const STDERR_LINE_LIMIT = TERMINAL_LINE_LIMIT + 100;


const top = process.env.RAMPACK_FUZZ_DIR ?? testDirectory('cli-fuzz');
/** Four levels below `top`, so that relative values with up to four `..` stay inside it. */
const cwd = join(top, 's1', 's2', 's3', 'cwd');
const inputs = join(top, 'inputs');
const out = join(top, 'out');
const cache = join(top, 'cache');
const layout = join(inputs, 'layout');
const paths = {
  agent: join(inputs, 'agent'),
  fifo: join(inputs, 'fifo'),
  dir: join(inputs, 'dir'),
  sparse: join(inputs, 'sparse-10g'),
  text: join(inputs, 'text'),
  recipe: join(inputs, 'recipe.yaml'),
  privateKey: join(inputs, 'signing.key'),
  publicKey: join(inputs, 'signing.pub'),
  /** Written by the first case that builds into `out`. */
  manifest: join(out, 'manifest.json'),
};

const CONTROL = ['line\nbreak', 'esc\u001b[31mred', 'tab\tand\rcr', 'bell\u0007', 'del\u007f', 'c1\u0085', 'ls\u2028ps'];
const UNICODE = ['é', '日本語', '🙂', '\u202eevil', 'Ⅻ', 'ﬁ'];
const HUGE = ['x'.repeat(100_000), 'y'.repeat(5000), `${'a/'.repeat(3000)}b`];
/** Relative values: they must stay where they point (inside `top`, by construction of `cwd`). */
const RELATIVE = ['../../escape', '../../../../escape', 'a/b', '.', '..', '', ' ', '-', '--', 'nonexistent', '~/x', '$HOME', 'C:\\x', ...CONTROL, ...UNICODE, ...HUGE];
/** Files that exist but are not what a command expects. */
const ODD_FILES = ['/dev/zero', '/dev/null', paths.fifo, paths.dir, paths.sparse, paths.text, paths.agent, paths.recipe];
/** What inspect, diff and verify read as initramfs files: the sparse file is left out, as they read it whole (10 GiB of NULs take a while). */
const INITRAMFS_PATHS = ODD_FILES.filter((path) => path !== paths.sparse);
const READ_PATHS = [...RELATIVE, ...ODD_FILES, join(top, 'nonexistent-abs'), `${paths.dir}/../../inputs/text`];
/** Where a command may be told to write: relative values, or paths inside `top`. */
/** (Not the input directory: verify, given it, would boot what a case built there.) */
const WRITE_PATHS = [...RELATIVE, join(top, 'w1'), join(top, 'w2'), paths.text, paths.fifo, join(paths.text, 'below')];
const NUMBERS = ['-1', '0', '1', '6', '19', '20', '99999999999999999999', '1e309', 'NaN', '0x10', '1.5', '-0', '64KiB', '1GiB', '9999999TiB', '', ' 3'];
const NAMES = ['go', 'lang', 'a', 'A', '-x', '1', '1.0', 'x'.repeat(64), 'x'.repeat(65), ...RELATIVE];
const ARCHES = ['x86_64', 'aarch64', 'riscv64', 'amd64', ...CONTROL.slice(0, 2), ''];

type Rng = () => number;
const pick = <T>(rng: Rng, values: readonly T[]): T => values[Math.floor(rng() * values.length)]!;

/** A value for a flag or field, from the pool most likely to find something, or from any pool. */
function anyValue(rng: Rng): string {
  return pick(rng, [...READ_PATHS, ...NUMBERS, ...NAMES]);
}

/** The valid arguments of a command, with one or two of its values replaced by hostile ones. */
function mutate(rng: Rng, valid: string[], pools: Record<number, readonly string[]>): string[] {
  const args = [...valid];
  const positions = Object.keys(pools).map(Number);
  const count = 1 + Math.floor(rng() * 2);
  for (let i = 0; i < count; i++) {
    const position = pick(rng, positions);
    args[position] = rng() < 0.7 ? pick(rng, pools[position]!) : anyValue(rng);
  }
  return args;
}

/** Options added to a build, each with the values that test it. */
const BUILD_OPTIONS: [string, readonly string[]][] = [
  ['--level', NUMBERS],
  ['--shard-size', NUMBERS],
  ['--env', ['A=1', 'A', '=x', '1A=x', 'A=\n', ...RELATIVE.slice(0, 6)]],
  ['--only', NAMES],
  ['--compression', ['gzip', 'zstd', 'none', 'xz', '']],
  ['--config', READ_PATHS],
  ['--ca-file', READ_PATHS],
  ['--registry-mirror', ['docker.io=http://127.0.0.1:1', 'x', '=', ...RELATIVE.slice(0, 4)]],
];

function buildCase(rng: Rng): string[] {
  const image = pick(rng, [`oci:${layout}:1.0`, `oci:${layout}`, `oci:${layout}:${pick(rng, NAMES)}`, `oci:${pick(rng, READ_PATHS)}`, `oci-archive:${pick(rng, READ_PATHS)}`, `docker-archive:${pick(rng, READ_PATHS)}`]);
  const valid = ['build', '--image', `oci:${layout}:1.0`, '--agent', paths.agent, '--language', 'lang', '--version', '1', '--arch', 'x86_64', '--out', out, '--cache', cache];
  const args = mutate(rng, valid, { 2: [image], 4: READ_PATHS, 6: NAMES, 8: NAMES, 10: ARCHES, 12: WRITE_PATHS, 14: WRITE_PATHS });
  // A registry reference would reach for the network: images stay local.
  if (!/^(oci|oci-archive|docker-archive):/.test(args[2]!)) args[2] = `oci:${args[2]}`;
  if (rng() < 0.5) {
    const [flag, values] = pick(rng, BUILD_OPTIONS);
    args.push(flag, pick(rng, values));
  }
  if (rng() < 0.1) args.push(pick(rng, ['--json', '-q', '-v']));
  return args;
}

const VALID_RECIPE = () => ({
  language: 'lang',
  image: `oci:${layout}`,
  versions: [{ version: '1', tag: '1.0' }],
  arches: ['x86_64'],
  agent: paths.agent,
  compression: 'gzip',
  level: 6,
  env: ['A=1'],
  memoryBudget: '512MiB',
  smoke: ['true'],
  files: [{ source: paths.text, destination: '/etc/extra', mode: '0644', owner: '0:0' }],
  drop: ['usr/share/doc/**'],
});

/** Recipe fields and the values that test them. */
const RECIPE_MUTATIONS: ((recipe: ReturnType<typeof VALID_RECIPE>, value: string) => unknown)[] = [
  (recipe, value) => (recipe.language = value),
  (recipe, value) => (recipe.versions[0]!.version = value),
  (recipe, value) => (recipe.versions[0]!.tag = value),
  (recipe, value) => ((recipe.versions[0] as Record<string, unknown>).digest = value),
  (recipe, value) => (recipe.arches = [value]),
  (recipe, value) => (recipe.agent = value),
  (recipe, value) => (recipe.image = `oci:${value}`),
  (recipe, value) => (recipe.env = [value]),
  (recipe, value) => (recipe.memoryBudget = value),
  (recipe, value) => ((recipe as Record<string, unknown>).level = Number(value)),
  (recipe, value) => (recipe.files[0]!.source = value),
  (recipe, value) => (recipe.files[0]!.destination = value),
  (recipe, value) => (recipe.files[0]!.mode = value),
  (recipe, value) => (recipe.files[0]!.owner = value),
  (recipe, value) => (recipe.drop = [value]),
  (recipe, value) => (recipe.smoke = [value]),
  (recipe, value) => ((recipe as Record<string, unknown>).kernel = { x86_64: value }),
];

const RECIPE_VALUES = [...READ_PATHS, ...NUMBERS, ...NAMES, '/etc/\u0000nul', '/init', '/', '/a/../b', '0:99999999999', '4294967296:0', '07777', '0999', '1 GiB', '-5MiB'];

function recipeCase(rng: Rng, index: number): string[] {
  const recipe = VALID_RECIPE();
  const mutations = 1 + Math.floor(rng() * 2);
  for (let i = 0; i < mutations; i++) pick(rng, RECIPE_MUTATIONS)(recipe, pick(rng, RECIPE_VALUES));
  const file = join(inputs, 'recipes', `case-${index}.yaml`);
  writeFileSync(file, stringify(recipe));
  return pick(rng, [['plan', file], ['plan', '--json', file], ['build', file, '--out', out, '--cache', cache], ['verify', '--boot', paths.text, '--recipe', file]]);
}

/** For the manifest commands: the manifest and keys that work, besides everything else. */
const MANIFEST_PATHS = [paths.manifest, paths.manifest, ...READ_PATHS];
const KEY_PATHS = [paths.privateKey, paths.publicKey, ...READ_PATHS];

function otherCase(rng: Rng): string[] {
  const read = () => pick(rng, READ_PATHS);
  const manifest = () => pick(rng, MANIFEST_PATHS);
  const key = () => pick(rng, KEY_PATHS);
  const write = () => pick(rng, WRITE_PATHS);
  return pick(rng, [
    () => ['inspect', pick(rng, [...INITRAMFS_PATHS, `oci:${read()}`, `oci:${layout}:${pick(rng, NAMES)}`, `oci-archive:${read()}`]), '--top', pick(rng, NUMBERS), '--cache', cache],
    () => ['inspect', pick(rng, INITRAMFS_PATHS), '--json'],
    () => ['diff', pick(rng, INITRAMFS_PATHS), pick(rng, INITRAMFS_PATHS)],
    // Not relative paths: an earlier case may have built an image there, and booting it is not this test's business.
    () => ['verify', '--boot', pick(rng, INITRAMFS_PATHS), '--memory', pick(rng, NUMBERS), '--timeout', pick(rng, NUMBERS), '--smoke', anyValue(rng), '--cache', cache],
    () => ['verify', pick(rng, INITRAMFS_PATHS), '--arch', pick(rng, ARCHES), '--kernel', anyValue(rng), '--cache', cache],
    () => ['manifest', 'merge', manifest(), manifest(), '--out', write()],
    () => ['manifest', 'sign', manifest(), '--key', key()],
    () => ['manifest', 'verify', manifest(), ...(rng() < 0.7 ? ['--key', key()] : [])],
    () => ['publish', manifest(), '--to', write(), ...(rng() < 0.5 ? ['--key', key()] : []), ...(rng() < 0.3 ? ['--prune'] : [])],
    () => ['build', pick(rng, [inputs, join(inputs, 'recipes'), paths.dir, ...READ_PATHS]), '--out', out, '--cache', cache, '--only', pick(rng, NAMES)],
    () => ['keygen', '--private', write(), '--public', write()],
    () => ['plan', read()],
    () => ['completion', anyValue(rng)],
    () => [anyValue(rng)],
    () => ['build', `--${pick(rng, NAMES)}`, anyValue(rng)],
  ])();
}

/** Paths a command line names for writing: what it may create. */
function writablePaths(args: string[]): string[] {
  const flags = new Set(['--out', '--cache', '--to', '--private', '--public']);
  const named = args.flatMap((arg, index) => (flags.has(args[index - 1]!) ? [resolve(cwd, arg)] : []));
  if (args[0] === 'manifest' && args[1] === 'sign') named.push(`${resolve(cwd, args[2]!)}.sig`);
  return named;
}

function isInside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir}/`);
}

/** What is wrong with one case's outcome; empty when it holds. */
function problems(testCase: BatchCase, result: BatchResult): string[] {
  const found: string[] = [];
  if (![0, 2, 3].includes(result.code)) found.push(`exit code ${result.code}`);
  if (result.crashes.length > 0) found.push(`crashed: ${result.crashes[0]!.slice(0, 300)}`);
  if (/\n\s+at .*:\d+:\d+/.test(result.stderr) || /rampack: internal error/.test(result.stderr)) found.push('stack trace or internal error on stderr');
  // Control characters of values are escaped: a raw newline would split a value into a forged line.
  if (/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029]/.test(result.stderr) || result.stderr.includes('\nbreak')) {
    found.push('raw control characters on stderr');
  }
  const long = result.stderr.split('\n').find((line) => line.length > STDERR_LINE_LIMIT);
  if (long !== undefined) found.push(`stderr line of ${long.length} characters`);
  const allowed = writablePaths(testCase.args);
  // A directory named for writing may be created with its missing parents.
  for (const path of result.created) {
    if (!allowed.some((dir) => isInside(path, dir) || isInside(dir, path))) found.push(`wrote ${path}`);
  }
  return found;
}

function describeCase(testCase: BatchCase, result: BatchResult, found: string[]): string {
  const shorten = (text: string) => JSON.stringify(text.length > 120 ? `${text.slice(0, 60)}…${text.slice(-40)}` : text);
  return `rampack ${testCase.args.map(shorten).join(' ')} -> ${found.join('; ')}\n  stderr: ${shorten(result.stderr)}`;
}

beforeAll(async () => {
  for (const dir of [cwd, inputs, paths.dir, join(inputs, 'recipes'), join(top, 'home'), join(top, 'w2')]) mkdirSync(dir, { recursive: true });
  copyFileSync(await buildTestAgent('x86_64'), paths.agent);
  await writeOciLayout(layout, languageImageSpec(), '1.0');
  execFileSync('mkfifo', [paths.fifo]);
  writeFileSync(paths.sparse, '');
  truncateSync(paths.sparse, 10 * 1024 ** 3);
  writeFileSync(paths.text, 'some text\n');
  writeFileSync(paths.recipe, stringify(VALID_RECIPE()));
  await writeKeyPair(paths.privateKey, paths.publicKey);
}, 120_000);

describe('the command line under hostile input', () => {
  it(`${CASES} cases from seed ${SEED}: exit 0, 2 or 3, nothing written outside the named directories, one readable line per error`, () => {
    const rng = seededRandom(SEED);
    const env = { HOME: join(top, 'home'), DOCKER_CONFIG: join(top, 'home', '.docker'), CI: 'true', RAMPACK_RETRY_BASE_MS: '1' };
    const cases: BatchCase[] = Array.from({ length: CASES }, (_, index) => {
      const kind = rng();
      const args = kind < 0.35 ? buildCase(rng) : kind < 0.6 ? recipeCase(rng, index) : otherCase(rng);
      const odd = rng();
      const oddEnv: Record<string, string> = odd < 0.05 ? { SOURCE_DATE_EPOCH: pick(rng, NUMBERS) } : odd < 0.1 ? { RAMPACK_SIGNING_KEY: pick(rng, [...RELATIVE.slice(0, 12), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----']) } : {};
      return { args, cwd, env: { ...env, ...oddEnv } };
    });
    const batch: Batch = { cases, watch: top, skip: [cache, join(inputs, 'layout')] };
    const batchFile = join(top, 'batch.json');
    const resultsFile = join(top, 'results.json');
    writeFileSync(batchFile, JSON.stringify(batch));
    const started = Date.now();
    const run = spawnSync(process.execPath, [join(REPO_ROOT, 'test', 'helpers', 'cli-batch.ts'), batchFile, resultsFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
      encoding: 'utf8',
      timeout: 100_000,
      env: { ...process.env, XDG_CACHE_HOME: '', XDG_CONFIG_HOME: '', HTTPS_PROXY: '', HTTP_PROXY: '' },
    });
    expect(run.stderr.slice(0, 2000)).toBe('');
    expect(run.status).toBe(0);
    const results = JSON.parse(readFileSync(resultsFile, 'utf8')) as BatchResult[];
    const failures = results.flatMap((result, index) => {
      const found = problems(cases[index]!, result);
      return found.length > 0 ? [describeCase(cases[index]!, result, found)] : [];
    });
    expect(failures).toEqual([]);
    const codes = results.reduce<Record<number, number>>((counts, result) => ({ ...counts, [result.code]: (counts[result.code] ?? 0) + 1 }), {});
    // The cases reach every class: some build, most are refused as usage or input errors.
    expect(Object.keys(codes).sort()).toEqual(['0', '2', '3']);
    expect(Date.now() - started).toBeLessThan(60_000);
  }, 150_000);
});
