/**
 * Runs many command lines through rampack's CLI entry point (main) in one
 * process, as `node cli-batch.ts BATCH.json RESULTS.json`: spawning Node per
 * case would cost ~0.4 s each. Each case gets its own working directory and
 * environment; stdout and stderr are captured, a rejection nobody handled
 * while a case runs is charged to that case (it would have crashed the CLI),
 * and the paths each case created under the watched directory are listed.
 */
import { appendFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../../src/cli/main.ts';

export interface BatchCase {
  args: string[];
  cwd: string;
  env: Record<string, string>;
}

export interface Batch {
  cases: BatchCase[];
  /** Directory whose new entries are reported per case. */
  watch: string;
  /** Directories under `watch` not looked into (caches: big, and written by design). */
  skip: string[];
}

export interface BatchResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Unhandled rejections and uncaught exceptions while the case ran. */
  crashes: string[];
  ms: number;
  /** Paths under the watched directory that the case created. */
  created: string[];
}

type Write = typeof process.stdout.write;

async function runCase(testCase: BatchCase, crashes: string[]): Promise<BatchResult> {
  let stdout = '';
  let stderr = '';
  const writes = { out: process.stdout.write, err: process.stderr.write };
  const capture = (append: (text: string) => void): Write =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      append(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const callback = rest.find((arg) => typeof arg === 'function') as (() => void) | undefined;
      callback?.();
      return true;
    }) as Write;
  const savedEnv = { ...process.env };
  const savedCwd = process.cwd();
  Object.assign(process.env, testCase.env);
  process.chdir(testCase.cwd);
  process.stdout.write = capture((text) => (stdout += text));
  process.stderr.write = capture((text) => (stderr += text));
  const started = Date.now();
  try {
    const code = await main(testCase.args);
    // Let stray promises of the case settle (and be charged to it) before the next starts.
    await new Promise((resolve) => setTimeout(resolve, 5));
    return { code, stdout, stderr, crashes: [...crashes], ms: Date.now() - started, created: [] };
  } finally {
    process.stdout.write = writes.out;
    process.stderr.write = writes.err;
    process.chdir(savedCwd);
    for (const name of Object.keys(process.env)) if (!(name in savedEnv)) delete process.env[name];
    Object.assign(process.env, savedEnv);
  }
}

/** Every path under `dir`, not descending into `skip`. */
function snapshot(dir: string, skip: ReadonlySet<string>, paths = new Set<string>()): Set<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    paths.add(path);
    if (entry.isDirectory() && !skip.has(path)) snapshot(path, skip, paths);
  }
  return paths;
}

function createdPaths(before: ReadonlySet<string>, after: ReadonlySet<string>): string[] {
  return [...after].filter((path) => !before.has(path)).sort();
}

const [batchFile, resultsFile] = process.argv.slice(2) as [string, string];
const { cases, watch, skip } = JSON.parse(readFileSync(batchFile, 'utf8')) as Batch;
const skipped = new Set(skip);
const results: BatchResult[] = [];
let crashes: string[] = [];
const charge = (error: unknown) => crashes.push(error instanceof Error ? `${error.name}: ${error.message}\n${error.stack}` : String(error));
process.on('unhandledRejection', charge);
process.on('uncaughtException', charge);
for (const testCase of cases) {
  crashes = [];
  const before = snapshot(watch, skipped);
  const result = await runCase(testCase, crashes);
  results.push({ ...result, created: createdPaths(before, snapshot(watch, skipped)) });
  // Progress, for a batch that overruns its time: which case, how long, what it ran.
  appendFileSync(`${resultsFile}.progress`, `${results.length - 1} ${result.code} ${result.ms}ms ${JSON.stringify(testCase.args).slice(0, 300)}\n`);
}
writeFileSync(resultsFile, JSON.stringify(results));
