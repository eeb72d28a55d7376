/**
 * Slim variants end to end, on an image made from Debian packages (glibc, a
 * dynamically linked busybox, python3.11 with its standard library, and a
 * compiler layer the workload never touches): `rampack slim` traces the
 * recipe's workload in the full image under QEMU, writes the trace, builds
 * the slim variant and proves it by booting; `rampack build` makes the same
 * slim bytes from the committed trace without booting; a program that is not
 * in the workload runs in the slim image; a workload that needs a file the
 * trace cannot see fails with that path, in `rampack slim` and in
 * `verify --boot`, which runs the smoke command and the workload on every
 * slim entry.
 */
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BootCheck } from '../../src/boot/check.ts';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { readTraceFile } from '../../src/slim/trace-file.ts';
import { formatBytes } from '../../src/util/log.ts';
import { runTracer } from '../../src/slim/tracer.ts';
import { workloadMemoryMiB } from '../../src/slim/tracer.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { REPO_ROOT, runRampack } from '../helpers/cli.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { interpreterImageSpec } from '../helpers/interpreter-image.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';
import { runInSlimImage } from '../helpers/slim-run.ts';
import { testDirectory } from '../helpers/temp.ts';

const work = testDirectory('slim');
const cache = join(work, 'cache');
let kernel: string;
let recipe: string;
/**
 * rampack runs that boot VMs: bounded, so that a VM that never powers off fails the test, but far above what
 * they take (tens of seconds alone), so that a loaded machine does not; test timeouts leave room for each such run.
 */
const BOOTING_RUN = { deadlineMs: 600_000 };

function recipeText(agent: string, layout: string, workload: string, extra = ''): string {
  return `language: python
image: oci:${layout}
versions:
  - version: "3.11"
    tag: latest
arches: [x86_64]
agent: ${agent}
compression: zstd
smoke: [python3, --version]
slim:
  files: workloads/python
  workload:
    - [${workload}]
  keep:
    - usr/lib/python3.11/**
    - "!usr/lib/python3.11/**/test/**"
    - "!usr/lib/python3.11/**/tests/**"
${extra}`;
}

beforeAll(async () => {
  ensureTools(TOOLS.qemuX86);
  kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
  const layout = join(work, 'layout');
  await writeOciLayout(layout, interpreterImageSpec('amd64'));
  await mkdir(join(work, 'recipe', 'workloads'), { recursive: true });
  await cp(join(REPO_ROOT, 'recipes', 'workloads', 'python'), join(work, 'recipe', 'workloads', 'python'), { recursive: true });
  recipe = join(work, 'recipe', 'python.yaml');
  await writeFile(recipe, recipeText(await buildTestAgent('x86_64'), layout, 'python3, /.rampack-probe/workload/service.py'));
}, 600_000);

async function manifestOf(out: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8')) as Manifest;
}

describe('rampack slim on a Python image from Debian packages', () => {
  const traced = join(work, 'traced');

  it('traces the workload, writes the trace, and proves the slim image by booting it', async () => {
    const result = await runRampack(['slim', recipe, '--out', traced, '--cache', cache, '--kernel', kernel], BOOTING_RUN);
    expect(result.stderr).toContain('every command passed in the slim image');
    expect(result.code).toBe(0);
    const manifest = await manifestOf(traced);
    const [full, slim] = [manifest.images.find((i) => !i.variant)!, manifest.images.find((i) => i.variant === 'slim')!];
    expect(slim.file).toBe('python-3.11-x86_64-slim.cpio.zst');
    expect(slim.source).toEqual(full.source);
    // The Python image without a compiler: at most half the bytes of the full image once unpacked.
    expect(slim.uncompressedSize).toBeLessThanOrEqual(full.uncompressedSize / 2);
    expect(slim.boot.minMemoryMiB).toBeLessThan(full.boot.minMemoryMiB);

    const trace = await readTraceFile(join(work, 'recipe', 'traces', 'python-3.11-x86_64.trace'));
    expect(trace.manifestDigest).toBe(full.source.manifestDigest);
    expect(trace.configDigest).toBe(full.source.configDigest);
    // The dynamic binary and its loader as the kernel and ld.so opened them, the interpreter's modules, no compiler.
    expect(trace.paths).toEqual(expect.arrayContaining(['usr/bin/python3.11', 'lib/x86_64-linux-gnu/libc.so.6', 'lib/x86_64-linux-gnu/ld-linux-x86-64.so.2', 'usr/lib/python3.11/json/__init__.py']));
    expect(trace.paths.some((path) => path.includes('cc1') || path.startsWith('usr/bin/perl'))).toBe(false);
    expect(trace.paths.some((path) => path.startsWith('rampack/') || path.startsWith('etc/rampack/') || path === 'init')).toBe(false);
  }, 1_200_000);

  it('builds the same slim bytes from the committed trace without booting', async () => {
    const rebuilt = join(work, 'rebuilt');
    const result = await runRampack(['build', recipe, '--out', rebuilt, '--cache', cache, '--verbose']);
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/python 3\.11 x86_64 slim: slim kept \d+ of \d+ entries, removed \d+ entries, \d+ bytes of file data saved/);
    const manifest = await manifestOf(rebuilt);
    expect(manifest.images.map((image) => image.file).sort()).toEqual(['python-3.11-x86_64-slim.cpio.zst', 'python-3.11-x86_64.cpio.zst']);
    for (const file of ['python-3.11-x86_64-slim.cpio.zst', 'python-3.11-x86_64.cpio.zst']) {
      expect((await readFile(join(rebuilt, file))).equals(await readFile(join(traced, file)))).toBe(true);
    }
    const inspected = await runRampack(['inspect', join(rebuilt, 'python-3.11-x86_64-slim.cpio.zst')]);
    expect(inspected.stdout).toMatch(/^slim {9}kept \d+ entries \(.+ of file data\), dropped \d+ entries \(.+\)$/m);
    const slim = manifest.images.find((image) => image.variant === 'slim')!;
    expect(inspected.stdout).toContain(`memory       boots in ${slim.boot.minMemoryMiB} MiB with ${slim.boot.cmdline}`);
    expect(result.stderr).toContain(`python 3.11 x86_64 slim: ${formatBytes(slim.uncompressedSize)} unpacked, boots in ${slim.boot.minMemoryMiB} MiB`);
    // verify --boot boots every entry as published: the smoke command in the full one at its boot.minMemoryMiB, the
    // smoke command and every slim.workload command (with slim.files) in the slim one, with the workload's memory.
    const verified = await runRampack(['verify', '--boot', join(rebuilt, 'manifest.json'), '--recipe', recipe, '--kernel', kernel, '--cache', cache, '--json'], BOOTING_RUN);
    expect(verified.code, verified.stderr).toBe(0);
    const checks = JSON.parse(verified.stdout) as BootCheck[];
    const full = manifest.images.find((image) => !image.variant)!;
    expect(checks.map((check) => [check.label, check.passed, check.memoryMiB, check.runs.map((run) => [run.command.join(' '), run.exit])])).toEqual([
      ['python 3.11 x86_64', true, full.boot.minMemoryMiB, [['python3 --version', 0]]],
      ['python 3.11 x86_64 slim', true, workloadMemoryMiB(slim), [['python3 --version', 0], ['python3 /.rampack-probe/workload/service.py', 0]]],
    ]);
    expect(checks[1]!.runs[1]!.output).toContain('service workload ok');
    const plan = await runRampack(['plan', recipe, '--json']);
    expect(plan.code).toBe(0);
    expect(JSON.parse(plan.stdout).include.map((cell: { key: string }) => cell.key)).toEqual(['python-3.11-x86_64', 'python-3.11-x86_64-slim']);
  }, 1_200_000);

  it('refuses a trace taken from another image, and leaves out a slim cell that was never traced', async () => {
    const traceText = await readFile(join(work, 'recipe', 'traces', 'python-3.11-x86_64.trace'), 'utf8');
    await writeFile(join(work, 'recipe', 'traces', 'stale.trace'), traceText.replace(/^manifestDigest sha256:[0-9a-f]{64}$/m, `manifestDigest sha256:${'0'.repeat(64)}`));
    const agent = await buildTestAgent('x86_64');
    const stale = join(work, 'recipe', 'stale.yaml');
    await writeFile(stale, recipeText(agent, join(work, 'layout'), 'python3, -c, "1"', '  trace: traces/stale.trace\n'));
    const refused = await runRampack(['build', stale, '--out', join(work, 'stale-out'), '--cache', cache]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain(`trace ${join(work, 'recipe', 'traces', 'stale.trace')} was taken from`);
    expect(refused.stderr).toContain(`rampack slim ${stale}`);

    const untraced = join(work, 'recipe', 'untraced.yaml');
    await writeFile(untraced, recipeText(agent, join(work, 'layout'), 'python3, -c, "1"', '  trace: traces/never.trace\n'));
    const skipped = await runRampack(['build', untraced, '--out', join(work, 'untraced-out'), '--cache', cache]);
    expect(skipped.code).toBe(0);
    expect(skipped.stderr).toContain('python-3.11-x86_64-slim: no trace');
    expect((await manifestOf(join(work, 'untraced-out'))).images.map((image) => image.variant)).toEqual([undefined]);
  }, 600_000);

  it('runs a standard-library program that is not in the workload in the slim image', async () => {
    const slim = (await manifestOf(traced)).images.find((image) => image.variant === 'slim')!;
    const run = await runInSlimImage({
      image: slim,
      out: traced,
      commands: [['python3', '/.rampack-probe/workload/other.py']],
      workloadFiles: join(REPO_ROOT, 'test', 'fixtures', 'slim'),
      mode: 'missing',
      kernel,
      cacheDir: cache,
      timeoutMs: 600_000,
    });
    expect(run.output).toContain('other program ok');
    expect(run.exits).toEqual([0]);
  }, 900_000);

  it('fails the slim step with the path a workload looked up but never opened', async () => {
    const layout = join(work, 'layout');
    const statOnly = join(work, 'recipe', 'stat-only.yaml');
    // `test -e` only stats: the tracer cannot see it, the slim image drops cpp, and the check fails there.
    const text = recipeText(await buildTestAgent('x86_64'), layout, 'sh, -c, "test -e /usr/bin/cpp-12 || exit 3"', '  trace: traces/stat-only.trace\n');
    await writeFile(statOnly, text);
    const result = await runRampack(['slim', statOnly, '--out', join(work, 'stat-only'), '--cache', cache, '--kernel', kernel], BOOTING_RUN);
    expect(result.code).toBe(5);
    expect(result.stderr).toContain('`sh -c test -e /usr/bin/cpp-12 || exit 3` exit 3');
    expect(result.stderr).toContain('missing from the slim image: /usr/bin/cpp-12');

    // The trace was written before the proof failed: a build makes the same slim image from it, and verify --boot
    // fails on it, naming the command and (from the full entry beside it) the path the slim image lacks.
    const out = join(work, 'stat-only-built');
    expect((await runRampack(['build', statOnly, '--out', out, '--cache', cache])).code).toBe(0);
    const verified = await runRampack(['verify', '--boot', out, '--recipe', statOnly, '--kernel', kernel, '--cache', cache], BOOTING_RUN);
    expect(verified.code).toBe(5);
    expect(verified.stdout).toMatch(
      /^FAIL python 3\.11 x86_64 slim \(.*\) at \d+ MiB: .*workload-command: the workload command `sh -c test -e \/usr\/bin\/cpp-12 \|\| exit 3` exited 3; missing from the slim image: \/usr\/bin\/cpp-12; /m,
    );
    expect(verified.stdout).toMatch(/^PASS python 3\.11 x86_64 \(.*\) at \d+ MiB: init started in .*, `python3 --version` exit 0; /m);
    expect(verified.stderr).toContain('rampack: error: 1 of 2 images failed the boot check: python 3.11 x86_64 slim');
  }, 1_800_000);
});

describe('the tracer on aarch64', () => {
  it('records what a command opens in an aarch64 image under qemu-system-aarch64 -M virt, run as the image\'s user with its env and working directory', async () => {
    ensureTools(TOOLS.qemuArm);
    const layout = join(work, 'arm-layout');
    const out = join(work, 'arm-out');
    await writeOciLayout(layout, { ...languageImageSpec('arm64'), user: 'nobody' }, '1.0');
    const built = await runRampack(['build', '--image', `oci:${layout}:1.0`, '--agent', await buildTestAgent('aarch64'), '--arch', 'aarch64', '--language', 'lang', '--version', '1.0', '--compression', 'zstd', '--out', out, '--cache', cache]);
    expect(built.code).toBe(0);
    const [image] = (await manifestOf(out)).images;
    const run = await runTracer({
      arch: 'aarch64',
      kernel: await ensureDebianKernel('aarch64', KERNEL_CACHE),
      initramfs: join(out, image!.file),
      cmdline: image!.boot.cmdline,
      commands: [['sh', '-c', 'cat /etc/motd'], ['lang-hello']],
      mode: 'trace',
      cacheDir: cache,
      memoryMiB: workloadMemoryMiB(image!),
      timeoutMs: 600_000,
    });
    expect(run.output).toContain('patched motd');
    // lang-hello is found on the image's PATH and prints LANG_VERSION, the working directory and the uid (nobody is 65534).
    expect(run.output).toContain('hello from lang 1.0 in /srv as 65534');
    expect(run.exits).toEqual([0, 0]);
    expect(run.paths).toEqual(expect.arrayContaining(['/bin/busybox', '/etc/motd', '/opt/lang/bin/lang-hello']));
  }, 900_000);
});

