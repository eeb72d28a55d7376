/**
 * The full vs slim table of `npm run bench`: images made from Debian packages
 * like the official ones (test/helpers/interpreter-image.ts: Python 3.11
 * with a compiler layer its workload never touches, and Go 1.19 with gcc)
 * are traced and slimmed by `rampack slim` with the workloads of
 * recipes/workloads; then each image's full and slim entries boot side by
 * side, alternating, with `verify --boot` at the same memory: bytes
 * compressed and unpacked, the published minimum memory, and the TCG time
 * from starting QEMU to init running.
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
import { golangImageSpec, interpreterImageSpec, writeGolangSlimRecipe } from '../../test/helpers/interpreter-image.ts';
import { writeOciLayout, type ImageSpec } from '../../test/helpers/oci-builder.ts';

/** Entries boot with at least this much RAM (more when the full image needs it), the same for both of an image. */
const BOOT_MEMORY_MIB = 1024;

function rampack(args: string[]): string {
  return execFileSync(process.execPath, [join(REPO_ROOT, 'bin', 'rampack.js'), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
}

const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** The Python recipe's slim section, as recipes/python.yaml has it for its own paths. */
async function writePythonSlimRecipe(dir: string, layout: string, agent: string): Promise<string> {
  mkdirSync(dir, { recursive: true });
  cpSync(join(REPO_ROOT, 'recipes', 'workloads', 'python'), join(dir, 'workloads', 'python'), { recursive: true });
  const recipe = join(dir, 'python.yaml');
  writeFileSync(recipe, `language: python
image: oci:${layout}
versions: [{version: "3.11", tag: latest}]
arches: [x86_64]
agent: ${agent}
compression: zstd
smoke: [python3, --version]
slim:
  files: workloads/python
  workload: [[python3, /.rampack-probe/workload/service.py]]
  keep: [usr/lib/python3.11/**, "!usr/lib/python3.11/**/test/**", "!usr/lib/python3.11/**/tests/**"]
`);
  return recipe;
}

interface SlimCase {
  name: string;
  image: () => ImageSpec;
  writeRecipe: (dir: string, layout: string, agent: string) => Promise<string>;
  smoke: string;
}

const CASES: readonly SlimCase[] = [
  { name: 'python', image: () => interpreterImageSpec('amd64'), writeRecipe: writePythonSlimRecipe, smoke: 'python3 --version' },
  { name: 'go', image: golangImageSpec, writeRecipe: writeGolangSlimRecipe, smoke: 'go version' },
];

/** Traces and slims one image with `rampack slim`, then boots its full and slim entries `rounds` times each, alternating: table rows. */
async function slimRows(work: string, slimCase: SlimCase, rounds: number): Promise<string[]> {
  const layout = join(work, `${slimCase.name}-layout`);
  await writeOciLayout(layout, slimCase.image());
  const recipe = await slimCase.writeRecipe(join(work, `${slimCase.name}-recipe`), layout, await buildTestAgent('x86_64'));
  const out = join(work, `${slimCase.name}-out`);
  const kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
  const cache = join(work, 'slim-cache');
  rampack(['slim', recipe, '--out', out, '--cache', cache, '--kernel', kernel, '--quiet']);
  const images = (JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest).images;
  // Both entries boot with the same memory, so that only their size differs: at least what the full one needs.
  const memory = Math.max(BOOT_MEMORY_MIB, ...images.map((image) => image.boot.minMemoryMiB));
  const ready = new Map<ManifestImage, number[]>(images.map((image) => [image, []]));
  for (let round = 0; round < rounds; round++) {
    for (const image of images) {
      const file = join(out, image.file);
      const [check] = JSON.parse(rampack(['verify', '--boot', file, '--smoke', slimCase.smoke, '--kernel', kernel, '--cache', cache, '--memory', String(memory), '--json'])) as BootCheck[];
      if (!check?.passed || check.initStartedMs === null) throw new Error(`${image.file} failed its boot check: ${check?.failure?.message}`);
      ready.get(image)!.push(check.initStartedMs);
    }
  }
  return [...ready].map(([image, times]) =>
    `| ${image.language} ${image.version} ${image.arch} | ${image.variant ?? 'full'} | ${mib(image.size)} | ${mib(image.uncompressedSize)} | ${image.boot.minMemoryMiB} | ${(median(times) / 1000).toFixed(1)} s at ${memory} MiB |`);
}

/** Builds, traces and slims each image in `work`, boots both entries `rounds` times each, and returns a markdown table. */
export async function slimBenchTable(work: string, rounds: number): Promise<string> {
  const lines = ['| image | variant | compressed MiB | unpacked MiB | boot.minMemoryMiB | QEMU start to init (TCG) |', '|---|---|---:|---:|---:|---:|'];
  for (const slimCase of CASES) lines.push(...(await slimRows(work, slimCase, rounds)));
  return `${lines.join('\n')}\n\nImages from Debian packages built like the official ones (test/helpers/interpreter-image.ts): Python 3.11 with a compiler layer, slimmed with recipes/workloads/python; Go 1.19 with gcc, slimmed with recipes/workloads/go (go build, the service, go test). Medians of ${rounds} alternating boots of each entry, both at the memory the full one needs (at least ${BOOT_MEMORY_MIB} MiB).\n`;
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
