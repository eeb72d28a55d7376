/**
 * `npm run bench:compare -- REV`: this checkout's rampack against the one at
 * git revision REV, side by side in one run, on the standard benchmark image
 * from a loopback registry: alternating cold, warm and agent-changed builds
 * (the order flips every round), each after `sync` and a pause. Prints the
 * medians and the ratio of this checkout to REV: how "no benchmark figure
 * regresses" is checked on a noisy machine, where absolute figures from two
 * days cannot be compared (docs/performance.md).
 *
 *   node scripts/bench/compare.ts REV [--rounds N] [--warm-repeats N] [--pause SECONDS] [--codec gzip,zstd]
 *
 * Warm builds take half a second, so each round times them --warm-repeats
 * times (default 3): one sample of a short run says little on a shared machine.
 *
 * REV is checked out into a temporary git worktree and built there (`npm ci`).
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildTestAgent } from '../../test/helpers/agent.ts';
import { REPO_ROOT } from '../../test/helpers/cli.ts';
import { pushLayout, startRegistry } from '../../test/helpers/registry.ts';
import { BENCH_TAG, benchImageLayout } from './image.ts';

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: { rounds: { type: 'string', default: '3' }, 'warm-repeats': { type: 'string', default: '3' }, pause: { type: 'string', default: '5' }, codec: { type: 'string', default: 'gzip,zstd' } },
});
const revision = positionals[0];
if (revision === undefined) throw new Error('usage: node scripts/bench/compare.ts REV [--rounds N] [--warm-repeats N] [--pause SECONDS] [--codec gzip,zstd]');
const codecs = flags.codec.split(',');
const RUNS = ['cold', 'warm, nothing changed', 'warm, agent changed'] as const;
const warmRepeats = Number(flags['warm-repeats']);

const work = mkdtempSync(join(tmpdir(), 'rampack-bench-compare-'));

/** A built checkout of `rev` in a temporary worktree. */
function checkoutOf(rev: string): string {
  const dir = join(work, 'baseline');
  execFileSync('git', ['-C', REPO_ROOT, 'worktree', 'add', '--detach', dir, rev], { stdio: 'inherit' });
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
  return dir;
}

/** CPU seconds (user + system, the whole process tree) and wall seconds of one build. */
function timedBuild(checkout: string, image: string, agent: string, codec: string, cache: string): { cpu: number; wall: number } {
  execFileSync('sync');
  execFileSync('sleep', [flags.pause]);
  const report = join(work, 'time.txt');
  const out = join(work, `out-${checkout === REPO_ROOT ? 'this' : 'baseline'}`);
  execFileSync('/usr/bin/time', ['-f', '%e %U %S', '-o', report, process.execPath, join(checkout, 'bin', 'rampack.js'), 'build', '--image', image,
    '--agent', agent, '--arch', 'x86_64', '--language', 'go', '--version', BENCH_TAG, '--compression', codec, '--out', out, '--cache', cache, '--quiet'],
  { stdio: ['ignore', 'ignore', 'inherit'] });
  const [wall, user, system] = readFileSync(report, 'utf8').trim().split(/\s+/).map(Number);
  return { cpu: user! + system!, wall: wall! };
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const baseline = checkoutOf(revision);
const registry = await startRegistry();
const samples = new Map<string, { cpu: number; wall: number }[]>();
try {
  await pushLayout(await benchImageLayout(), BENCH_TAG, registry.host, 'bench/golang');
  const image = `${registry.host}/bench/golang:${BENCH_TAG}`;
  const agent = await buildTestAgent('x86_64');
  const changedAgent = join(work, 'agent-changed');
  for (let round = 0; round < Number(flags.rounds); round++) {
    for (const codec of codecs) {
      const checkouts = round % 2 === 0 ? [REPO_ROOT, baseline] : [baseline, REPO_ROOT];
      for (const checkout of checkouts) {
        process.stderr.write(`round ${round + 1}, ${codec}, ${checkout === REPO_ROOT ? 'this checkout' : revision}\n`);
        const cache = join(work, 'cache');
        rmSync(cache, { recursive: true, force: true });
        copyFileSync(agent, changedAgent);
        for (const run of RUNS) {
          const key = `${codec}|${run}|${checkout === REPO_ROOT ? 'this' : 'baseline'}`;
          for (let repeat = 0; repeat < (run === 'cold' ? 1 : warmRepeats); repeat++) {
            if (run === 'warm, agent changed') appendFileSync(changedAgent, Buffer.from([repeat]));
            samples.set(key, [...(samples.get(key) ?? []), timedBuild(checkout, image, run === 'warm, agent changed' ? changedAgent : agent, codec, cache)]);
          }
        }
      }
    }
  }
} finally {
  await registry.stop();
  execFileSync('git', ['-C', REPO_ROOT, 'worktree', 'remove', '--force', baseline]);
  if (existsSync(work)) rmSync(work, { recursive: true, force: true });
}

const lines = [`| codec | run | CPU s, ${revision} | CPU s, this | CPU ratio | wall s, ${revision} | wall s, this |`, '|---|---|---:|---:|---:|---:|---:|'];
for (const codec of codecs) {
  for (const run of RUNS) {
    const [before, after] = (['baseline', 'this'] as const).map((side) => samples.get(`${codec}|${run}|${side}`)!);
    const cpu = [median(before!.map((s) => s.cpu)), median(after!.map((s) => s.cpu))] as const;
    const wall = [median(before!.map((s) => s.wall)), median(after!.map((s) => s.wall))] as const;
    lines.push(`| ${codec} | ${run} | ${cpu[0].toFixed(2)} | ${cpu[1].toFixed(2)} | ${(cpu[1] / cpu[0]).toFixed(2)}x | ${wall[0].toFixed(2)} | ${wall[1].toFixed(2)} |`);
  }
}
process.stdout.write(`${lines.join('\n')}\n\nMedians of ${flags.rounds} alternating rounds (warm builds ${warmRepeats} times a round), each build after \`sync\` and a ${flags.pause} s pause.\n`);
