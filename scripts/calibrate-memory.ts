/**
 * Calibrates the guest-memory rule (src/boot/memory.ts): builds generated
 * images of different shapes for both arches, then bisects the smallest
 * memory each boots in with `rampack verify --boot --find-min-memory`, and
 * prints measured and published minimums side by side (docs/runtime.md holds
 * the results). Each image boots about six times under TCG: minutes per shape.
 *
 *   node scripts/calibrate-memory.ts [tiny|small-files|big-files ...] [--arch x86_64|aarch64] [--step MiB]
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { MemorySearch } from '../src/boot/check.ts';
import type { Manifest } from '../src/manifest/manifest.ts';
import { buildTestAgent, SILENT_AGENT_SOURCE } from '../test/helpers/agent.ts';
import { runRampack } from '../test/helpers/cli.ts';
import { TEST_CACHE } from '../test/helpers/debian.ts';
import { languageImageSpec } from '../test/helpers/images.ts';
import { writeOciLayout, type TarEntrySpec } from '../test/helpers/oci-builder.ts';

const MiB = 1024 * 1024;

/** Data layers per shape, on top of the small language image (busybox, a shell script as smoke command). */
const SHAPES: Record<string, () => TarEntrySpec[]> = {
  tiny: () => [],
  /** 30,000 files of 1 KiB in 300 directories: entries and page rounding dominate. */
  'small-files': () =>
    Array.from({ length: 300 }, (_, d) => [
      { name: `data/d${d}/`, type: 'directory' as const },
      ...Array.from({ length: 100 }, (_, f): TarEntrySpec => ({ name: `data/d${d}/file-${f}.txt`, content: randomBytes(512).toString('hex') })),
    ]).flat(),
  /** Three incompressible 48 MiB files: the compressed file is as large as the tree. */
  'big-files': () => [{ name: 'data/', type: 'directory' }, ...[0, 1, 2].map((i): TarEntrySpec => ({ name: `data/blob-${i}.bin`, content: randomBytes(48 * MiB) }))],
};

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { arch: { type: 'string' }, step: { type: 'string', default: '8' } },
});
const shapes = positionals.length > 0 ? positionals : Object.keys(SHAPES);
const arches = values.arch ? [values.arch] : ['x86_64', 'aarch64'];
const work = mkdtempSync(join(tmpdir(), 'rampack-calibrate-'));

async function rampack(args: string[]): Promise<string> {
  const result = await runRampack(args);
  if (result.code !== 0 && !(args[0] === 'verify' && result.code === 5)) throw new Error(`rampack ${args.join(' ')} failed:\n${result.stderr}`);
  return result.stdout;
}

try {
  const agents = { x86_64: await buildTestAgent('x86_64', SILENT_AGENT_SOURCE), aarch64: await buildTestAgent('aarch64', SILENT_AGENT_SOURCE) };
  for (const shape of shapes) {
    const data = SHAPES[shape]!();
    const specs = ['amd64', 'arm64'].map((architecture) => {
      const spec = languageImageSpec(architecture);
      return data.length === 0 ? spec : { ...spec, layers: [...spec.layers, { entries: data, compression: 'none' as const }] };
    });
    const layout = join(work, shape);
    await writeOciLayout(layout, specs, '1.0');
    const recipe = join(work, `${shape}.yaml`);
    writeFileSync(
      recipe,
      `language: ${shape}\nimage: oci:${layout}\nversions:\n  - version: "1.0"\narches: [${arches.join(', ')}]\n` +
        `agent:\n  x86_64: ${agents.x86_64}\n  aarch64: ${agents.aarch64}\ncompression: zstd\nsmoke: [lang-hello]\n`,
    );
    const out = join(work, `${shape}-out`);
    await rampack(['build', recipe, '--out', out, '--cache', join(work, 'cache')]);
    const searches = JSON.parse(
      await rampack(['verify', '--boot', join(out, 'manifest.json'), '--recipe', recipe, '--cache', TEST_CACHE, '--find-min-memory', '--step', values.step!, '--json']),
    ) as MemorySearch[];
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest;
    for (const search of searches) {
      const entry = manifest.images.find((image) => image.arch === search.arch)!;
      const sizes = `file ${(entry.size / MiB).toFixed(1)} MiB, cpio ${(entry.uncompressedSize / MiB).toFixed(1)} MiB`;
      const margin = search.measuredMiB === null ? 'n/a' : `${Math.round(((search.publishedMiB - search.measuredMiB) / search.measuredMiB) * 100)}%`;
      console.log(
        `${shape}\t${search.arch}\t${sizes}\tmeasured ${search.measuredMiB} MiB (fails at ${search.failedMiB}: ${search.failure?.kind})\tpublished ${search.publishedMiB} MiB\t${margin}\t` +
          search.trials.map((trial) => `${trial.memoryMiB}${trial.passed ? '+' : '-'}`).join(' '),
      );
    }
    rmSync(out, { recursive: true, force: true });
    rmSync(layout, { recursive: true, force: true });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
