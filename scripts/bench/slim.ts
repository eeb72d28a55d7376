/**
 * The full vs slim table of `npm run bench`: the Python image made from
 * Debian packages (test/helpers/interpreter-image.ts: glibc, python3.11 with
 * its standard library, and a compiler layer the workload never touches) is
 * traced and slimmed with the workload of recipes/python.yaml by `rampack
 * slim`; then both entries boot side by side, alternating, with `verify
 * --boot` at the same memory: bytes compressed and unpacked, the published
 * minimum memory, and the TCG time from starting QEMU to init running.
 *
 *   node scripts/bench/slim.ts [--rounds N]   (alone; bench.ts prints it too)
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import type { BootCheck } from '../../src/boot/check.ts';
import type { Manifest, ManifestImage } from '../../src/manifest/manifest.ts';
import { buildTestAgent } from '../../test/helpers/agent.ts';
import { REPO_ROOT } from '../../test/helpers/cli.ts';
import { KERNEL_CACHE } from '../../test/helpers/debian.ts';
import { interpreterImageSpec } from '../../test/helpers/interpreter-image.ts';
import { writeOciLayout } from '../../test/helpers/oci-builder.ts';

/** Both images boot with this much RAM, so that only their size differs. */
const BOOT_MEMORY_MIB = 1024;

function rampack(args: string[]): string {
  return execFileSync(process.execPath, [join(REPO_ROOT, 'bin', 'rampack.js'), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
}

const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** Builds, traces and slims the image in `work`, boots both entries `rounds` times each, and returns a markdown table. */
export async function slimBenchTable(work: string, rounds: number): Promise<string> {
  const layout = join(work, 'python-layout');
  await writeOciLayout(layout, interpreterImageSpec('amd64'));
  const recipeDir = join(work, 'python-recipe');
  mkdirSync(recipeDir, { recursive: true });
  cpSync(join(REPO_ROOT, 'recipes', 'workloads', 'python'), join(recipeDir, 'workloads', 'python'), { recursive: true });
  const recipe = join(recipeDir, 'python.yaml');
  writeFileSync(recipe, `language: python
image: oci:${layout}
versions: [{version: "3.11", tag: latest}]
arches: [x86_64]
agent: ${await buildTestAgent('x86_64')}
compression: zstd
smoke: [python3, --version]
slim:
  files: workloads/python
  workload: [[python3, /.rampack-probe/workload/service.py]]
  keep: [usr/lib/python3.11/**, "!usr/lib/python3.11/**/test/**", "!usr/lib/python3.11/**/tests/**"]
`);
  const out = join(work, 'python-out');
  const kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
  const cache = join(work, 'slim-cache');
  rampack(['slim', recipe, '--out', out, '--cache', cache, '--kernel', kernel, '--quiet']);
  const images = (JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest).images;
  const ready = new Map<ManifestImage, number[]>(images.map((image) => [image, []]));
  for (let round = 0; round < rounds; round++) {
    for (const image of images) {
      const file = join(out, image.file);
      const [check] = JSON.parse(rampack(['verify', '--boot', file, '--smoke', 'python3 --version', '--kernel', kernel, '--cache', cache, '--memory', String(BOOT_MEMORY_MIB), '--json'])) as BootCheck[];
      if (!check?.passed || check.initStartedMs === null) throw new Error(`${image.file} failed its boot check: ${check?.failure?.message}`);
      ready.get(image)!.push(check.initStartedMs);
    }
  }
  const lines = ['| image | variant | compressed MiB | unpacked MiB | boot.minMemoryMiB | QEMU start to init (TCG) |', '|---|---|---:|---:|---:|---:|'];
  for (const [image, times] of ready) {
    lines.push(`| ${image.language} ${image.version} ${image.arch} | ${image.variant ?? 'full'} | ${mib(image.size)} | ${mib(image.uncompressedSize)} | ${image.boot.minMemoryMiB} | ${(median(times) / 1000).toFixed(1)} s |`);
  }
  return `${lines.join('\n')}\n\nPython 3.11 from Debian packages with a compiler layer, slimmed by \`rampack slim\` with recipes/workloads/python; medians of ${rounds} alternating boots each at ${BOOT_MEMORY_MIB} MiB.\n`;
}

if (import.meta.filename === process.argv[1]) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
  const work = mkdtempSync(join(tmpdir(), 'rampack-bench-slim-'));
  try {
    process.stdout.write(await slimBenchTable(work, Number(values.rounds)));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
