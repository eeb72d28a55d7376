/**
 * The boot contract on an image large enough for memory to matter (about
 * 110 MiB unpacked, 96 MiB of it incompressible, generated at test time):
 * - `verify --boot` boots it at exactly its published boot.minMemoryMiB with
 *   boot.cmdline and the probe runs the smoke command, and at 70% of it the
 *   boot fails with the unpack or memory failure reported;
 * - a reader that knows only the manifest fields and docs/runtime.md
 *   (kernel, initrd, boot.cmdline then console then "--" args, minMemoryMiB)
 *   boots each arch with plain QEMU and the agent runs a command.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BootCheck } from '../../src/boot/check.ts';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import type { Arch } from '../../src/oci/content.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { buildTestAgent, parseRunExits } from '../helpers/agent.ts';
import { runRampack } from '../helpers/cli.ts';
import { busyboxBinary, KERNEL_CACHE, TEST_CACHE } from '../helpers/debian.ts';
import { languageImageSpec } from '../helpers/images.ts';
import { writeOciLayout, type TarEntrySpec } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

let work: string;
let manifest: Manifest;
let out: string;

/** Two incompressible 48 MiB files and 6,000 small text files in 60 directories. */
function dataLayer(): TarEntrySpec[] {
  const small = Array.from({ length: 60 }, (_, d) => [
    { name: `data/d${d}/`, type: 'directory' as const },
    ...Array.from({ length: 100 }, (_, f): TarEntrySpec => ({ name: `data/d${d}/f${f}.txt`, content: randomBytes(1024).toString('hex') })),
  ]).flat();
  return [{ name: 'data/', type: 'directory' }, { name: 'data/a.bin', content: randomBytes(48 * MiB) }, { name: 'data/b.bin', content: randomBytes(48 * MiB) }, ...small];
}

beforeAll(async () => {
  ensureTools(TOOLS.qemuX86, TOOLS.qemuArm, TOOLS.musl, TOOLS.aarch64Gcc, TOOLS.aarch64Libc);
  await ensureDebianKernel('x86_64', KERNEL_CACHE);
  await ensureDebianKernel('aarch64', KERNEL_CACHE);
  busyboxBinary('arm64');
  work = mkdtempSync(join(tmpdir(), 'rampack-boot-memory-'));
  const data = dataLayer();
  const specs = ['amd64', 'arm64'].map((architecture) => {
    const spec = languageImageSpec(architecture);
    return { ...spec, layers: [...spec.layers, { entries: data, compression: 'none' as const }] };
  });
  await writeOciLayout(join(work, 'layout'), specs, '1.0');
  // The test agent: the reader below watches it run a command, as a runtime would watch its own agent.
  const agents = { x86_64: await buildTestAgent('x86_64'), aarch64: await buildTestAgent('aarch64') };
  const recipe = join(work, 'big.yaml');
  writeFileSync(
    recipe,
    `language: big\nimage: oci:${join(work, 'layout')}\nversions:\n  - version: "1.0"\narches: [x86_64, aarch64]\n` +
      `agent:\n  x86_64: ${agents.x86_64}\n  aarch64: ${agents.aarch64}\ncompression: zstd\nsmoke: [lang-hello]\n`,
  );
  out = join(work, 'out');
  const build = await runRampack(['build', recipe, '--out', out, '--cache', join(work, 'cache')]);
  expect(build.stderr).not.toContain('error');
  expect(build.code).toBe(0);
  manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
}, 300_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

function entry(arch: Arch) {
  return manifest.images.find((image) => image.arch === arch)!;
}

describe('the published memory minimum', () => {
  it('is large enough for the memory limit to matter', () => {
    const image = entry('x86_64');
    expect(image.uncompressedSize).toBeGreaterThan(100 * MiB);
    // More than the old rule (compressed + unpacked), less than tmpfs would need (twice the tree).
    expect(image.boot.minMemoryMiB * MiB).toBeGreaterThan(image.size + image.uncompressedSize);
    expect(image.boot.minMemoryMiB * MiB).toBeLessThan(2 * image.uncompressedSize + image.size + 128 * MiB);
  });

  it('boots at exactly boot.minMemoryMiB with boot.cmdline, and the probe runs the smoke command', async () => {
    const result = await runRampack(['verify', '--boot', join(out, 'manifest.json'), '--smoke', 'lang-hello', '--arch', 'x86_64', '--cache', TEST_CACHE, '--json']);
    expect(result.code, result.stderr).toBe(0);
    const [check] = JSON.parse(result.stdout) as BootCheck[];
    expect(check).toMatchObject({ passed: true, memoryMiB: entry('x86_64').boot.minMemoryMiB, cmdline: 'rootfstype=ramfs cma=0', smokeExit: 0 });
    expect(check!.smokeOutput).toBe('hello from lang 1.0 in /srv as 0');
  }, 300_000);

  it('fails clearly below it, reporting the unpack or memory failure and the memory given', async () => {
    const minimum = entry('x86_64').boot.minMemoryMiB;
    const given = Math.floor(minimum * 0.7);
    const result = await runRampack(['verify', '--boot', join(out, 'manifest.json'), '--smoke', 'lang-hello', '--arch', 'x86_64', '--memory', String(given), '--cache', TEST_CACHE]);
    expect(result.code).toBe(5);
    expect(result.stdout).toMatch(new RegExp(`^FAIL big 1\\.0 x86_64 \\(.*\\) at ${given} MiB: init never started, (unpack|out-of-memory): `));
    expect(result.stdout).toMatch(/Initramfs unpacking failed: write error|System is deadlocked on memory|Out of memory/);
    expect(result.stdout).toContain(`the VM had ${given} MiB, the entry publishes boot.minMemoryMiB ${minimum}`);
  }, 300_000);
});

/** QEMU as docs/runtime.md shows it, from the manifest's fields alone. */
const READER_VMM: Record<Arch, { command: string; machine: string[]; console: string }> = {
  x86_64: { command: 'qemu-system-x86_64', machine: [], console: 'ttyS0' },
  aarch64: { command: 'qemu-system-aarch64', machine: ['-M', 'virt', '-cpu', 'max'], console: 'ttyAMA0' },
};

describe('a runtime reading only the manifest', () => {
  for (const arch of ['x86_64', 'aarch64'] as const) {
    it(`boots the ${arch} entry at boot.minMemoryMiB with boot.cmdline, and its agent runs a command`, async () => {
      const image = entry(arch);
      const vmm = READER_VMM[arch];
      const kernel = await ensureDebianKernel(arch, KERNEL_CACHE);
      const { stdout: screen } = await run(
        vmm.command,
        [
          ...vmm.machine, '-accel', 'tcg', '-m', String(image.boot.minMemoryMiB), '-smp', '1', '-nodefaults', '-display', 'none',
          '-serial', 'stdio', '-no-reboot', '-kernel', kernel, '-initrd', join(out, image.file),
          '-append', `${image.boot.cmdline} console=${vmm.console} panic=-1 -- run lang-hello`,
        ],
        { timeout: 280_000, maxBuffer: 16 * MiB },
      );
      const stdout = screen.replace(/\r/g, '');
      // QEMU exits 0 on a panic too: the console decides.
      expect(stdout).not.toMatch(/Kernel panic|Initramfs unpacking failed|Out of memory/);
      expect(stdout).toContain('hello from lang 1.0 in /srv as 0');
      expect(parseRunExits(stdout)).toEqual([0]);
    }, 300_000);
  }
});
