/**
 * `rampack verify --boot` as CI runs it before publishing: a recipe builds
 * x86_64 and aarch64 images from one multi-arch index in a real registry, and
 * verify boots each under QEMU (qemu-system-x86_64, qemu-system-aarch64 -M
 * virt) with Debian's stock kernels and the test agent cross-compiled per
 * arch, running the recipe's smoke command through the agent.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import type { BootCheck } from '../../src/cli/verify.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { CLI_DEADLINE_MS, runRampack } from '../helpers/cli.ts';
import { busyboxBinary, KERNEL_CACHE, TEST_CACHE } from '../helpers/debian.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { pushLayout, startRegistry } from '../helpers/registry.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

/**
 * Bounded at every level, so that under load a slow boot fails the test instead of hanging the file: each VM
 * is killed by verify after VM_TIMEOUT, each rampack run (with its VMs) by runRampack after its deadline
 * (CLI_DEADLINE_MS), and both come before the test's own timeout.
 */
const VM_TIMEOUT = ['--timeout', '120'];
const TEST_TIMEOUT_MS = CLI_DEADLINE_MS + 15_000;

let work: string;
let registry: Awaited<ReturnType<typeof startRegistry>>;
let out: string;
let recipe: string;

beforeAll(async () => {
  ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.qemuX86, TOOLS.qemuArm, TOOLS.musl, TOOLS.aarch64Gcc, TOOLS.aarch64Libc);
  // The arm64 kernel fetch adds the arm64 architecture to dpkg, which the arm64 busybox download needs.
  await ensureDebianKernel('x86_64', KERNEL_CACHE);
  await ensureDebianKernel('aarch64', KERNEL_CACHE);
  busyboxBinary('arm64');
  work = mkdtempSync(join(tmpdir(), 'rampack-verify-'));
  const agents = { x86_64: await buildTestAgent('x86_64'), aarch64: await buildTestAgent('aarch64') };
  registry = await startRegistry();
  const index = join(work, 'index');
  await writeOciLayout(index, [languageImageSpec('amd64'), languageImageSpec('arm64')], '1.0');
  await pushLayout(index, '1.0', registry.host, 'lang/runtime', { all: true });
  recipe = join(work, 'lang.yaml');
  writeFileSync(
    recipe,
    `language: lang\nimage: ${registry.host}/lang/runtime\nversions:\n  - version: "1.0"\narches: [x86_64, aarch64]\n` +
      `agent:\n  x86_64: ${agents.x86_64}\n  aarch64: ${agents.aarch64}\nsmoke: [lang-hello]\n`,
  );
  out = join(work, 'out');
  const build = await runRampack(['build', recipe, '--out', out, '--cache', join(work, 'cache')]);
  expect(build.stderr).not.toContain('error');
  expect(build.code).toBe(0);
});

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('rampack verify --boot', { timeout: TEST_TIMEOUT_MS }, () => {
  it('boots both arches of a manifest with Debian kernels and passes the recipe’s smoke command', async () => {
    // --cache TEST_CACHE: the default kernels come from <cache>/kernels, where the test setup fetched them.
    const result = await runRampack(['verify', '--boot', join(out, 'manifest.json'), '--recipe', recipe, '--cache', TEST_CACHE, '--json', ...VM_TIMEOUT]);
    expect(result.stderr).not.toContain('error');
    expect(result.code).toBe(0);
    const checks = JSON.parse(result.stdout) as BootCheck[];
    expect(checks.map((check) => [check.label, check.passed, check.smokeExit])).toEqual([
      ['lang 1.0 aarch64', true, 0],
      ['lang 1.0 x86_64', true, 0],
    ]);
    for (const check of checks) {
      expect(check.smokeOutput).toBe('hello from lang 1.0 in /srv as 0');
      expect(check.agentReadyMs).toBeGreaterThan(0);
      expect(check.guestUptimeSeconds).toBeGreaterThan(0);
    }
  });

  it('boots with the kernel the recipe names for the arch', async () => {
    const kernel = join(work, 'vmlinuz-from-recipe');
    copyFileSync(await ensureDebianKernel('x86_64', KERNEL_CACHE), kernel);
    const withKernel = join(work, 'lang-kernel.yaml');
    writeFileSync(withKernel, `${readFileSync(recipe, 'utf8')}kernel:\n  x86_64: ${kernel}\n`);
    const result = await runRampack(['verify', '--boot', join(out, 'manifest.json'), '--recipe', withKernel, '--arch', 'x86_64', '--json', ...VM_TIMEOUT]);
    expect(result.code).toBe(0);
    const [check] = JSON.parse(result.stdout) as BootCheck[];
    expect(check).toMatchObject({ kernel, passed: true });
  });

  it('reports a failing smoke command with exit code 5, and the time to agent-ready of each image', async () => {
    const file = join(out, 'lang-1.0-x86_64.cpio.gz');
    const kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
    const result = await runRampack(['verify', '--boot', file, '--smoke', 'cat /no/such/file', '--kernel', `x86_64=${kernel}`, ...VM_TIMEOUT]);
    expect(result.code).toBe(5);
    expect(result.stdout).toMatch(
      new RegExp(`^FAIL lang 1\\.0 x86_64 \\(${file}\\): agent ready in \\d+\\.\\ds, the smoke command exited 1; \\d+\\.\\ds in all\\n$`),
    );
    expect(result.stderr).toContain('No such file or directory');
    expect(result.stderr).toContain('rampack: error: 1 of 1 images failed the boot check: lang 1.0 x86_64');
  });

  it('needs a smoke command, and a kernel or emulator it can find', async () => {
    const noSmoke = await runRampack(['verify', '--boot', out]);
    expect(noSmoke.code).toBe(2);
    expect(noSmoke.stderr).toContain('rampack: hint: pass --smoke "CMD ARGS" or --recipe FILE');
    const missingKernel = await runRampack(['verify', '--boot', out, '--smoke', 'lang-hello', '--kernel', join(work, 'no-vmlinuz'), '--arch', 'x86_64']);
    expect(missingKernel.code).toBe(3);
    expect(missingKernel.stderr).toContain(`kernel ${join(work, 'no-vmlinuz')} cannot be read`);
  });
});
