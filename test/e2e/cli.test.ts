/**
 * The command line as a user meets it: progress as plain lines (CI, pipes)
 * and as a task view on a real terminal (a pseudo-terminal from util-linux
 * `script`), --json results, size warnings, inspect and diff on images built
 * here, completion scripts, help texts, and the documented exit codes.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InitramfsDiff } from '../../src/inspect/diff.ts';
import type { ImageInspection } from '../../src/inspect/image.ts';
import type { InitramfsSummary } from '../../src/inspect/initramfs.ts';
import type { ManifestImage } from '../../src/manifest/manifest.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { CLI_DEADLINE_MS, REPO_ROOT, runRampack, type CliResult } from '../helpers/cli.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout, type ImageSpec } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, 'src', 'cli', 'main.ts');
const ESCAPE = '\x1b[';
/** SGR foreground colors, as listr2 draws its icons. */
const COLOR = /\x1b\[3[0-9]m/;
const LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warn|debug) /;

let work: string;
let agent: string;
let registry: Awaited<ReturnType<typeof startRegistry>>;
let layoutV1: string;
let layoutV2: string;

/** An environment without the variables that pick the output mode, so each test sets its own. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm-256color', ...extra };
  for (const name of ['CI', 'NO_COLOR', 'FORCE_COLOR', 'NODE_DISABLE_COLORS']) if (!(name in extra)) delete env[name];
  return env;
}

/** Runs rampack on a pseudo-terminal (stdin, stdout and stderr all on it), 120 columns wide. */
/** Runs the CLI in a pseudo-terminal; `stdoutTo` sends its stdout to a file instead (stderr stays on the terminal). */
function runInTerminal(args: string[], env: NodeJS.ProcessEnv = {}, stdoutTo?: string): Promise<CliResult> {
  const quote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`;
  const redirect = stdoutTo === undefined ? '' : ` > ${quote(stdoutTo)}`;
  const command = `stty cols 120 rows 50; ${[process.execPath, MAIN, ...args].map(quote).join(' ')}${redirect}`;
  // script exits with the command's status; execFile rejects on non-zero, carrying the output.
  const options = { cwd: REPO_ROOT, env: cleanEnv(env), timeout: CLI_DEADLINE_MS, killSignal: 'SIGKILL' as const };
  return run('script', ['-qfec', command, '/dev/null'], options).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr, timedOut: false }),
    (error: { code: number; stdout: string; stderr: string; killed?: boolean }) =>
      ({ code: error.code, stdout: error.stdout, stderr: error.stderr, timedOut: error.killed === true }),
  );
}

function rampack(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runRampack(args, { env: cleanEnv(env) });
}

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Version 2 of the language image: a file added, one changed, one removed. */
function languageImageV2(): ImageSpec {
  const spec = languageImageSpec();
  return {
    ...spec,
    layers: [
      ...spec.layers,
      {
        entries: [
          { name: 'opt/lang/VERSION', content: '2.0.0\n' },
          { name: 'opt/lang/lib/stdlib.txt', content: 'x'.repeat(5000) },
          { name: 'var/cache/lang/.wh.index', content: '' },
        ],
        compression: 'gzip',
      },
    ],
  };
}

function buildArgs(layout: string, out: string, extra: string[] = []): string[] {
  return ['build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'lang', '--version', '1.0',
    '--out', out, '--cache', join(work, 'cache'), ...extra];
}

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.musl, TOOLS.cpio);
  work = mkdtempSync(join(tmpdir(), 'rampack-cli-'));
  agent = await buildTestAgent('x86_64');
  layoutV1 = join(work, 'layout-v1');
  layoutV2 = join(work, 'layout-v2');
  await writeOciLayout(layoutV1, languageImageSpec(), '1.0');
  await writeOciLayout(layoutV2, languageImageV2(), '1.0');
  registry = await startRegistry();
  const index = join(work, 'index');
  await writeOciLayout(index, [languageImageSpec('amd64'), languageImageSpec('arm64')], '2.0');
  await pushLayout(index, '2.0', registry.host, 'lang/runtime', { all: true });
});

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('build progress', () => {
  it('is plain timestamped lines when not on a terminal, with pull bytes and rate, entries and ratio; --json on stdout', async () => {
    const out = join(work, 'out-plain');
    const result = await rampack([
      'build', '--image', `${registry.host}/lang/runtime:2.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'lang',
      '--version', '2.0', '--out', out, '--cache', join(work, 'cache-plain'), '--json',
    ]);
    expect(result.stderr).not.toContain(ESCAPE);
    expect(result.code).toBe(0);
    const lines = result.stderr.trimEnd().split('\n');
    for (const line of lines) expect(line).toMatch(LOG_LINE);
    expect(result.stderr).toMatch(/lang 2\.0 x86_64: resolve: sha256:[0-9a-f]{64} \(3 layers\) in \d+\.\ds/);
    expect(result.stderr).toMatch(/pull: 3 layers, 1\.0 MiB \(1\.0 MiB downloaded\), [\d.]+ [KMG]?i?B\/s in /);
    expect(result.stderr).toMatch(/flatten: 4\d entries in /);
    expect(result.stderr).toMatch(/compress: 2\.0 MiB -> 1\.0 MiB \(gzip, 1\.\dx\)/);
    expect(result.stderr).toMatch(/write: lang-2\.0-x86_64\.cpio\.gz, updated .*manifest\.json/);
    const json = JSON.parse(result.stdout) as { manifest: string; images: (ManifestImage & { path: string })[] };
    expect(json.manifest).toBe(join(out, 'manifest.json'));
    expect(json.images).toHaveLength(1);
    expect(json.images[0]!.path).toBe(join(out, 'lang-2.0-x86_64.cpio.gz'));
    expect(json.images[0]!.sha256).toBe(sha256File(json.images[0]!.path));
  });

  it('is a task view on a terminal: a task per image and stage, icons and colors', async () => {
    const result = await runInTerminal(buildArgs(layoutV1, join(work, 'out-tty')));
    expect(result.code).toBe(0);
    const screen = result.stdout;
    expect(screen).toContain(ESCAPE);
    expect(screen).toMatch(COLOR);
    expect(screen).toContain('✔');
    expect(screen).toMatch(/lang 1\.0 x86_64: done in \d+\.\ds/);
    for (const stage of ['resolve: sha256:', 'pull: 3 layers', 'flatten: ', 'compress: 2.0 MiB -> ', 'write: lang-1.0-x86_64.cpio.gz']) {
      expect(screen).toContain(stage);
    }
    expect(screen).not.toMatch(LOG_LINE);
  });

  it('shows publishing as a task on a terminal, and as a timestamped line elsewhere', async () => {
    const manifest = join(work, 'out-tty', 'manifest.json');
    const site = join(work, 'site-tty');
    const tty = await runInTerminal(['publish', manifest, '--to', site]);
    expect(tty.code).toBe(0);
    expect(tty.stdout).toContain('✔');
    expect(tty.stdout).toMatch(/publish: 1 files copied, 0 already there in \d/);
    expect(tty.stdout).not.toMatch(LOG_LINE);
    const plain = await rampack(['publish', manifest, '--to', site]);
    expect(plain.code).toBe(0);
    expect(plain.stderr).toMatch(/^\S+ info publish \S+: publish: 0 files copied, 1 already there in \d/m);
    expect(plain.stderr).not.toContain(ESCAPE);
  });

  it('colors the task view on a terminal even when stdout goes to a file', async () => {
    const json = join(work, 'built.json');
    const result = await runInTerminal([...buildArgs(layoutV1, join(work, 'out-tty-json')), '--json'], {}, json);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('✔');
    expect(result.stdout).toMatch(COLOR);
    expect((JSON.parse(readFileSync(json, 'utf8')) as { images: unknown[] }).images).toHaveLength(1);
  });

  it('NO_COLOR keeps the task view but drops the colors', async () => {
    const result = await runInTerminal(buildArgs(layoutV1, join(work, 'out-tty-nocolor')), { NO_COLOR: '1' });
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('compress: 2.0 MiB -> ');
    expect(result.stdout).toContain('✔');
    expect(result.stdout).not.toMatch(COLOR);
  });

  it('in CI, or with --quiet, a terminal gets plain lines or nothing', async () => {
    const ci = await runInTerminal(buildArgs(layoutV1, join(work, 'out-tty-ci')), { CI: 'true' });
    expect(ci.code).toBe(0);
    expect(ci.stdout).not.toContain(ESCAPE);
    expect(ci.stdout).toMatch(/info lang 1\.0 x86_64: compress: /);
    const quiet = await runInTerminal(buildArgs(layoutV1, join(work, 'out-tty-quiet'), ['--quiet']));
    expect(quiet.code).toBe(0);
    expect(quiet.stdout).toBe('');
  });

  it('--verbose adds debug lines', async () => {
    const result = await rampack(buildArgs(layoutV1, join(work, 'out-verbose'), ['--verbose']));
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/debug lang 1\.0 x86_64: pull started/);
    expect(result.stderr).toMatch(/debug lang 1\.0 x86_64: largest directories: \/bin 1\.9 MiB/);
  });

  it('warns when the image’s boot.minMemoryMiB is over the recipe’s memory budget, naming the largest directories', async () => {
    const recipe = join(work, 'budget.yaml');
    writeFileSync(recipe, `language: lang\nimage: oci:${layoutV1}\nversions:\n  - version: "1.0"\narches: [x86_64]\nagent: ${agent}\nmemoryBudget: 2MiB\n`);
    const result = await rampack(['build', recipe, '--out', join(work, 'out-budget'), '--cache', join(work, 'cache')]);
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(
      /warn lang 1\.0 x86_64: booting needs \d+\.0 MiB of RAM \(boot\.minMemoryMiB; 1\.0 MiB compressed, 2\.0 MiB unpacked\), over the memory budget of 2\.0 MiB; largest directories: \/bin 1\.9 MiB, /,
    );
    writeFileSync(recipe, readFileSync(recipe, 'utf8').replace('2MiB', '1GiB'));
    const roomy = await rampack(['build', recipe, '--out', join(work, 'out-budget'), '--cache', join(work, 'cache')]);
    expect(roomy.code).toBe(0);
    expect(roomy.stderr).not.toContain('warn');
  });
});

describe('inspect and diff', () => {
  let v1: string;
  let v2: string;

  beforeAll(async () => {
    const out1 = join(work, 'out-v1');
    const out2 = join(work, 'out-v2');
    expect((await rampack(buildArgs(layoutV1, out1))).code).toBe(0);
    expect((await rampack(buildArgs(layoutV2, out2, ['--compression', 'zstd']))).code).toBe(0);
    v1 = join(out1, 'lang-1.0-x86_64.cpio.gz');
    v2 = join(out2, 'lang-1.0-x86_64.cpio.zst');
  });

  it('inspect FILE shows entries, sizes by directory, largest files, ratio, the agent digest and image.json', async () => {
    const text = await rampack(['inspect', v1]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/size +1\.0 MiB \(gzip\), 2\.0 MiB uncompressed, ratio 1\.\d+x/);
    expect(text.stdout).toContain(`agent        /init sha256:${sha256File(agent)}`);
    expect(text.stdout).toMatch(/\n {2}\/bin +1\.9 MiB +1 file\n/);
    expect(text.stdout).toMatch(/largest files:\n {2}1\.9 MiB +\/bin\/busybox\n/);
    expect(text.stdout).toContain('"cmd": [');

    const json = JSON.parse((await rampack(['inspect', v1, '--json', '--top', '3'])).stdout) as InitramfsSummary;
    expect(json.compression).toEqual(['gzip']);
    expect(json.size).toBe(readFileSync(v1).length);
    expect(json.uncompressedSize).toBe(execFileSync('gzip', ['-dc', v1], { maxBuffer: 1 << 28 }).length);
    expect(json.agent).toEqual({ path: '/init', sha256: sha256File(agent), size: readFileSync(agent).length });
    expect(json.largestFiles.map((file) => file.path)).toEqual(['/bin/busybox', '/init', '/etc/rampack/image.json']);
    expect(json.imageJson).toMatchObject({ language: 'lang', version: '1.0', arch: 'x86_64', workingDir: '/srv' });
    // lang-hello and its hard link hold one copy of the data
    expect(json.entriesByType.file).toBe(json.largestFiles.length + 9);
  });

  it('inspect reads a plain archive followed by a compressed one, as the kernel does', async () => {
    const early = join(work, 'early');
    mkdirSync(join(early, 'kernel/x86/microcode'), { recursive: true });
    writeFileSync(join(early, 'kernel/x86/microcode/GenuineIntel.bin'), 'microcode');
    const earlyCpio = execFileSync('sh', ['-c', 'find kernel | LC_ALL=C sort | cpio -o -H newc --quiet'], { cwd: early });
    const combined = join(work, 'combined.cpio');
    writeFileSync(combined, Buffer.concat([earlyCpio, readFileSync(v1)]));
    const json = JSON.parse((await rampack(['inspect', combined, '--json'])).stdout) as InitramfsSummary;
    expect(json.compression).toEqual(['none', 'gzip']);
    expect(json.topLevelDirectories.map((dir) => dir.path)).toContain('/kernel');
    expect(json.agent?.sha256).toBe(sha256File(agent));
  });

  it('inspect IMAGE lists platforms, layers, sizes and the config without building', async () => {
    const result = await rampack(['inspect', `${registry.host}/lang/runtime:2.0`, '--json', '--cache', join(work, 'cache-inspect')]);
    expect(result.code).toBe(0);
    const json = JSON.parse(result.stdout) as ImageInspection;
    expect(json.indexDigest).toMatch(/^sha256:/);
    expect(json.platforms).toEqual(['linux/amd64', 'linux/arm64']);
    expect(json.images.map((image) => image.arch)).toEqual(['x86_64', 'aarch64']);
    expect(json.images[0]!.layers).toHaveLength(3);
    expect(json.images[0]!.size).toBe(json.images[0]!.layers.reduce((sum, layer) => sum + layer.size, 0));
    expect(json.images[1]!.env).toContain('LANG_VERSION=1.0');
    const text = await rampack(['inspect', `${registry.host}/lang/runtime:2.0`, '--cache', join(work, 'cache-inspect')]);
    expect(text.stdout).toContain('platforms    linux/amd64, linux/arm64');
    expect(text.stdout).toContain('linux/arm64 (aarch64)');
    expect(() => readFileSync(join(work, 'cache-inspect', 'blobs'))).toThrow();
  });

  it('diff lists added, removed and changed entries with size deltas', async () => {
    const text = await rampack(['diff', v1, v2]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/added \(2\):\n {2}\+ \/opt\/lang\/lib +0 B +±0 B +dir\n {2}\+ \/opt\/lang\/lib\/stdlib\.txt +4\.9 KiB +\+4\.9 KiB +file/);
    expect(text.stdout).toMatch(/removed \(1\):\n {2}- \/var\/cache\/lang\/index +12 B +-12 B +file/);
    expect(text.stdout).toMatch(/~ \/opt\/lang\/VERSION +4 B -> 6 B +\+2 B +content/);
    expect(text.stdout).toMatch(/2 added, 1 removed, \d+ changed, \d+ unchanged/);

    const diff = JSON.parse((await rampack(['diff', v1, v2, '--json'])).stdout) as InitramfsDiff;
    expect(diff.added.map((entry) => entry.path)).toEqual(['/opt/lang/lib', '/opt/lang/lib/stdlib.txt']);
    expect(diff.removed.map((entry) => entry.path)).toEqual(['/var/cache/lang/index']);
    expect(diff.changed.find((entry) => entry.path === '/opt/lang/VERSION')).toMatchObject({ sizeBefore: 4, sizeAfter: 6, changed: ['content'] });
    // image.json names another manifest digest; the agent is the same
    expect(diff.changed.map((entry) => entry.path)).toContain('/etc/rampack/image.json');
    expect(diff.changed.map((entry) => entry.path)).not.toContain('/init');
    expect(diff.delta.fileBytes).toBe(diff.b.fileBytes - diff.a.fileBytes);
    expect(diff.a.file).toBe(v1);

    const same = JSON.parse((await rampack(['diff', v1, v1, '--json'])).stdout) as InitramfsDiff;
    expect(same.added.length + same.removed.length + same.changed.length).toBe(0);
  });
});

describe('the launcher (bin/rampack.js)', () => {
  it('replaces itself with a Node that has the heap flags, keeping its pid, arguments and exit status', async () => {
    // Each Node the launcher runs reports itself on stderr as it starts.
    // (no spaces: NODE_OPTIONS splits on them)
    const report = 'data:text/javascript,console.error(JSON.stringify({pid:process.pid,execArgv:process.execArgv}))';
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(REPO_ROOT, 'bin', 'rampack.js'), '--version'], {
      env: { ...process.env, NODE_OPTIONS: `--import=${report}` },
    });
    expect(stdout.trim()).toBe(JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')).version);
    const starts = stderr.trim().split('\n').map((line) => JSON.parse(line) as { pid: number; execArgv: string[] });
    expect(starts).toHaveLength(2);
    expect(starts[0]!.execArgv).not.toContain('--initial-old-space-size=128');
    expect(starts[1]!.execArgv).toEqual(expect.arrayContaining(['--initial-old-space-size=128', '--max-semi-space-size=2']));
    expect(starts[1]!.pid).toBe(starts[0]!.pid);
    const failing = await promisify(execFile)(process.execPath, [join(REPO_ROOT, 'bin', 'rampack.js'), 'no-such-command']).catch((error: { code: number }) => error);
    expect((failing as { code: number }).code).toBe(2);
  });
});

describe('help, completion and exit codes', () => {
  it('has --help with examples for every command', async () => {
    for (const command of ['build', 'inspect', 'diff', 'verify', 'completion']) {
      const result = await rampack([command, '--help']);
      expect(result.code, command).toBe(0);
      expect(result.stdout, command).toContain('Examples:');
    }
    expect((await rampack(['--help'])).stdout).toContain('Exit codes: 0 ok, 1 internal error');
  });

  it('prints completion scripts for bash, zsh and fish that the shells parse and answer with', async () => {
    ensureTools(TOOLS.zsh, TOOLS.fish);
    const bash = await rampack(['completion', 'bash']);
    expect(bash.code).toBe(0);
    execFileSync('bash', ['-n'], { input: bash.stdout });
    const completed = execFileSync('bash', ['-c', `${bash.stdout}\nCOMP_WORDS=(rampack verify --ar); COMP_CWORD=2; _rampack; echo "\${COMPREPLY[@]}"\nCOMP_WORDS=(rampack build --arch ''); COMP_CWORD=3; _rampack; echo "\${COMPREPLY[@]}"`]).toString();
    expect(completed).toBe('--arch\nx86_64 aarch64\n');
    const nested = execFileSync('bash', ['-c', `${bash.stdout}\nCOMP_WORDS=(rampack manifest ''); COMP_CWORD=2; _rampack; echo "\${COMPREPLY[@]}"`]).toString();
    expect(nested).toBe('merge sign verify\n');
    const nestedOptions = execFileSync('bash', ['-c', `${bash.stdout}\nCOMP_WORDS=(rampack manifest merge --o); COMP_CWORD=3; _rampack; echo "\${COMPREPLY[@]}"`]).toString();
    expect(nestedOptions).toBe('--out\n');
    const zsh = (await rampack(['completion', 'zsh'])).stdout;
    expect(zsh).toMatch(/^#compdef rampack\n[\s\S]*'\(-q --quiet\)'\{-q,--quiet\}/);
    expect(zsh).toContain('(manifest) if (( CURRENT == 3 )); then _values subcommand merge sign verify;');
    expect(zsh).toMatch(/\(merge\) _arguments '--out\[/);
    execFileSync('zsh', ['-n'], { input: zsh });
    const fish = (await rampack(['completion', 'fish'])).stdout;
    expect(fish).toContain("complete -c rampack -n '__fish_seen_subcommand_from verify' -l smoke -r");
    expect(fish).toContain("complete -c rampack -f -n '__fish_seen_subcommand_from manifest' -a 'merge sign verify'");
    const fishScript = join(work, 'rampack.fish');
    writeFileSync(fishScript, fish);
    execFileSync('fish', ['--no-execute', fishScript]);
    // fish answers completions itself: ask it, with the script loaded.
    const fishAnswers = execFileSync('fish', ['-c', `source ${fishScript}; complete -C 'rampack build --arch '`]).toString();
    expect(fishAnswers.split('\n').map((line) => line.split('\t')[0])).toEqual(expect.arrayContaining(['x86_64', 'aarch64']));
    const fishNested = execFileSync('fish', ['-c', `source ${fishScript}; complete -C 'rampack manifest sign --'`]).toString();
    expect(fishNested.split('\n').map((line) => line.split('\t')[0])).toContain('--key');
  });

  it('exits 2 for usage errors', async () => {
    for (const args of [['inspect'], ['diff', 'a'], ['completion', 'tcsh'], ['verify', 'out'], ['bogus'], ['inspect', 'x', '--top', '0']]) {
      const result = await rampack(args);
      expect(result.code, args.join(' ')).toBe(2);
    }
    expect((await rampack(['verify', 'out'])).stderr).toContain('rampack: error: verify needs --boot');
    // Only the named command's module is loaded, yet a typo still gets commander's suggestion, on its own line.
    expect((await rampack(['buidl'])).stderr).toBe("error: unknown command 'buidl'\n(Did you mean build?)\n(run with --help for usage)\n");
    expect((await rampack(['build', '--qiet'])).stderr).toContain("error: unknown option '--qiet'\n(Did you mean --quiet?)\n");
  });

  it('exits 3 for bad input, naming the file and what to do; --debug adds the stack trace', async () => {
    const garbage = join(work, 'garbage.cpio');
    writeFileSync(garbage, 'this is not an initramfs at all\n'.repeat(10));
    const result = await rampack(['inspect', garbage]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`rampack: error: ${garbage}: bad cpio magic "this i" at byte offset 0`);
    expect(result.stderr).toContain('rampack: hint: is it an initramfs');
    expect(result.stderr).not.toContain('    at ');
    const debug = await rampack(['inspect', garbage, '--debug']);
    expect(debug.code).toBe(3);
    expect(debug.stderr).toMatch(/\n {4}at /);
  });

  it('exits 4 when the registry cannot be reached', async () => {
    const result = await rampack(['inspect', '127.0.0.1:9/lang/runtime:1.0', '--cache', join(work, 'cache-unreachable')]);
    expect(result.code).toBe(4);
    expect(result.stderr).toContain('127.0.0.1:9');
  });
});
