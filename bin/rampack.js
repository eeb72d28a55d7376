#!/usr/bin/env node
// Launcher: starts rampack under the Node and heap settings it needs.
// - HEAP_FLAGS, which V8 takes only at startup (not in NODE_OPTIONS): a build
//   streams gigabytes of Buffers through a heap of 10-30 MB, and V8 sizes the
//   old generation's limit from that small live size, so with its default
//   16 MB young generation it starts a full marking cycle every ~80 ms (about
//   60 in a 5 s build, a sixth of all CPU). A 128 MB floor on the old
//   generation and a 2 MB young generation cut that to ~15 (docs/performance.md).
//   The process re-executes itself with them before it loads anything else:
//   whatever it loaded first would be thrown away.
// - Node >= 22.15 (zstd in node:zlib), the first with process.execve: on an
//   older Node, re-run under the Node of npm's `node` package (an optional
//   dependency), else say what to install (node-runtime.js).
const HEAP_FLAGS = ['--initial-old-space-size=128', '--max-semi-space-size=2'];
const { fileURLToPath } = await import('node:url');
const script = fileURLToPath(import.meta.url);
if (typeof process.execve !== 'function') {
  const { rerunUnderRecentNode } = await import('./node-runtime.js');
  rerunUnderRecentNode(script, process.argv.slice(2), HEAP_FLAGS);
} else if (!HEAP_FLAGS.every((flag) => process.execArgv.includes(flag))) {
  try {
    // Replaces this process (same pid, signals and exit status go straight to the new one).
    process.execve(process.execPath, [process.execPath, ...HEAP_FLAGS, ...process.execArgv, script, ...process.argv.slice(2)]);
  } catch {
    // A sandbox that forbids execve: run as we are, only with more garbage collection.
  }
}
const { default: module } = await import('node:module');
const { existsSync } = await import('node:fs');
// Compiled code of rampack's modules is cached between runs (in the OS temp dir): warm rebuilds start faster.
module.enableCompileCache?.();
const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('rampack: error: dist/ is missing; run `npm run build` in the rampack checkout\n');
  process.exit(1);
}
const { run } = await import(entry.href);
await run(process.argv.slice(2));
