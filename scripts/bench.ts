/**
 * npm run bench: rampack against the by-hand pipeline (skopeo copy -> umoci
 * unpack -> find | sort | cpio -H newc -> gzip/zstd) on a ~700 MB image from
 * real Debian packages served by a loopback registry. Runs alternate, side by
 * side, so the ratios are comparable on a noisy machine. A cold rampack build
 * of an image twice as large shows how memory grows. Then a full vs slim
 * table (bench/slim.ts). Prints markdown tables; `--write` also puts them in
 * docs/performance.md.
 *
 *   node scripts/bench.ts [--rounds N] [--pause SECONDS] [--write]
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { compressorIdentity } from '../src/compress/index.ts';
import { buildTestAgent } from '../test/helpers/agent.ts';
import { REPO_ROOT } from '../test/helpers/cli.ts';
import { pushLayout, startRegistry } from '../test/helpers/registry.ts';
import { ensureNativeAddons } from '../test/helpers/native.ts';
import { ensureTools, TOOLS } from '../test/helpers/system.ts';
import { BENCH_TAG, benchImageLayout } from './bench/image.ts';
import { slimBenchTable } from './bench/slim.ts';

type Codec = 'gzip' | 'zstd';

interface Measurement {
  pipeline: string;
  codec: Codec;
  run: string;
  wallSeconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
  outputMiB: number;
}

const { values: flags } = parseArgs({
  options: { rounds: { type: 'string', default: '2' }, pause: { type: 'string', default: '15' }, write: { type: 'boolean', default: false } },
});
const work = mkdtempSync(join(tmpdir(), 'rampack-bench-'));

/** Runs a command under GNU time; returns wall, user+sys CPU and peak RSS of the whole process tree. */
function timed(command: string, args: string[], env: NodeJS.ProcessEnv = {}): Omit<Measurement, 'pipeline' | 'codec' | 'run' | 'outputMiB'> {
  const report = join(work, 'time.txt');
  // Every run starts with the previous one's writes on disk and after a pause, so none pays for
  // another's writeback, or runs on a CPU the previous run left throttled (seen here: the same
  // build is ~15% slower right after a 20 s run than after 15 s of rest).
  execFileSync('sync');
  execFileSync('sleep', [flags.pause]);
  execFileSync('/usr/bin/time', ['-f', '%e %U %S %M', '-o', report, command, ...args], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
  const [wall, user, system, rssKiB] = readFileSync(report, 'utf8').trim().split(/\s+/).map(Number);
  return { wallSeconds: wall!, cpuSeconds: user! + system!, peakRssMiB: rssKiB! / 1024 };
}

const mib = (path: string) => statSync(path).size / 2 ** 20;

/** The run label of the larger image's cold builds. */
const LARGE_RUN = 'cold, image 2x as large';

function byHand(image: string, codec: Codec): Measurement {
  const dir = join(work, 'by-hand');
  const output = join(work, `by-hand.cpio.${codec}`);
  const compress = codec === 'gzip' ? 'gzip -6' : 'zstd -3 -q';
  const script = `set -euo pipefail
rm -rf "${dir}" && mkdir -p "${dir}"
skopeo copy --quiet --src-tls-verify=false docker://${image} oci:"${dir}/img:${BENCH_TAG}"
umoci unpack --image "${dir}/img:${BENCH_TAG}" "${dir}/bundle" > /dev/null
cd "${dir}/bundle/rootfs" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | ${compress} > "${output}"`;
  const measured = timed('bash', ['-c', script]);
  rmSync(dir, { recursive: true, force: true });
  return { pipeline: 'by hand', codec, run: 'cold', ...measured, outputMiB: mib(output) };
}

function rampack(image: string, codec: Codec, run: string, agent: string, cache: string): Measurement {
  const out = join(work, `out-${codec}`);
  const args = [join(REPO_ROOT, 'bin', 'rampack.js'), 'build', '--image', image, '--agent', agent, '--arch', 'x86_64',
    '--language', 'go', '--version', BENCH_TAG, '--compression', codec, '--out', out, '--cache', cache, '--quiet'];
  const measured = timed(process.execPath, args);
  return { pipeline: 'rampack', codec, run, ...measured, outputMiB: mib(join(out, `go-${BENCH_TAG}-x86_64.cpio.${codec === 'gzip' ? 'gz' : 'zst'}`)) };
}

function machine(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  return `${cpus().length} × ${cpu}, ${Math.round(Number(readFileSync('/proc/meminfo', 'utf8').match(/MemTotal:\s+(\d+)/)![1]) / 2 ** 20)} GiB RAM, Node ${process.versions.node}, gzip by ${compressorIdentity('gzip')}`;
}

function table(rows: Measurement[]): string {
  const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const groups = new Map<string, Measurement[]>();
  for (const row of rows) groups.set(`${row.pipeline}|${row.codec}|${row.run}`, [...(groups.get(`${row.pipeline}|${row.codec}|${row.run}`) ?? []), row]);
  const handWall = (codec: Codec) => median(rows.filter((r) => r.pipeline === 'by hand' && r.codec === codec).map((r) => r.wallSeconds));
  const handSize = (codec: Codec) => median(rows.filter((r) => r.pipeline === 'by hand' && r.codec === codec).map((r) => r.outputMiB));
  // The larger image has no by-hand run: its rows show how time and memory grow, not a ratio.
  const ratio = (value: number, byHand: number, run: string, digits: number) => (run === LARGE_RUN ? '' : `${(value / byHand).toFixed(digits)}x`);
  const lines = ['| pipeline | codec | run | wall s | CPU s | peak RSS MiB | output MiB | wall vs by hand | size vs by hand |', '|---|---|---|---:|---:|---:|---:|---:|---:|'];
  for (const group of groups.values()) {
    const { pipeline, codec, run } = group[0]!;
    const wall = median(group.map((r) => r.wallSeconds));
    const size = median(group.map((r) => r.outputMiB));
    lines.push(`| ${pipeline} | ${codec} | ${run} | ${wall.toFixed(1)} | ${median(group.map((r) => r.cpuSeconds)).toFixed(1)} | ${median(group.map((r) => r.peakRssMiB)).toFixed(0)} | ${size.toFixed(1)} | ${ratio(wall, handWall(codec), run, 2)} | ${ratio(size, handSize(codec), run, 3)} |`);
  }
  return `${lines.join('\n')}\n\nMedians of ${flags.rounds} alternating rounds, each run after \`sync\` and a ${flags.pause} s pause; ${machine()}.\n`;
}

ensureTools(TOOLS.registry, TOOLS.skopeo, TOOLS.umoci, TOOLS.cpio, TOOLS.zstd, TOOLS.gzip, TOOLS.musl, TOOLS.gnuTime);
// RAMPACK_DEFLATE=zlib still measures node:zlib, for comparison.
ensureNativeAddons();
const layout = await benchImageLayout();
const largeLayout = await benchImageLayout('large');
const agent = await buildTestAgent('x86_64');
const changedAgent = join(work, 'agent-changed');
copyFileSync(agent, changedAgent);
appendFileSync(changedAgent, Buffer.from([0]));
const registry = await startRegistry();
const rows: Measurement[] = [];
let slimResult: string;
try {
  await pushLayout(layout, BENCH_TAG, registry.host, 'bench/golang');
  await pushLayout(largeLayout, BENCH_TAG, registry.host, 'bench/large');
  const image = `${registry.host}/bench/golang:${BENCH_TAG}`;
  const largeImage = `${registry.host}/bench/large:${BENCH_TAG}`;
  for (let round = 1; round <= Number(flags.rounds); round++) {
    for (const codec of ['gzip', 'zstd'] as const) {
      process.stderr.write(`round ${round}, ${codec}\n`);
      rows.push(byHand(image, codec));
      const cache = join(work, 'cache');
      rmSync(cache, { recursive: true, force: true });
      rows.push(rampack(image, codec, 'cold', agent, cache));
      rows.push(rampack(image, codec, 'warm, nothing changed', agent, cache));
      rows.push(rampack(image, codec, 'warm, agent changed', changedAgent, cache));
      rmSync(cache, { recursive: true, force: true });
      rows.push(rampack(largeImage, codec, LARGE_RUN, agent, cache));
    }
  }
  slimResult = await slimBenchTable(work, Number(flags.rounds));
} finally {
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
}
const result = table(rows);
process.stdout.write(`${result}\n${slimResult}`);
if (flags.write) {
  const doc = join(REPO_ROOT, 'docs', 'performance.md');
  const text = readFileSync(doc, 'utf8')
    .replace(/<!-- bench -->[\s\S]*<!-- \/bench -->/, `<!-- bench -->\n${result}<!-- /bench -->`)
    .replace(/<!-- bench-slim -->[\s\S]*<!-- \/bench-slim -->/, `<!-- bench-slim -->\n${slimResult}<!-- /bench-slim -->`);
  writeFileSync(doc, text);
}
