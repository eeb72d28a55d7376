#!/usr/bin/env node
// Launcher: rampack needs Node >= 22.15 (zstd in node:zlib). On an older Node,
// re-run under the Node that the project pins as a dev dependency, if present.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 15)) {
  const pinned = fileURLToPath(new URL('../node_modules/node/bin/node', import.meta.url));
  if (!existsSync(pinned)) {
    process.stderr.write(`rampack: error: Node ${process.versions.node} is too old; rampack needs Node >= 22.15\n`);
    process.exit(1);
  }
  const result = spawnSync(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(result.status ?? 1);
}
const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('rampack: error: dist/ is missing; run `npm run build` in the rampack checkout\n');
  process.exit(1);
}
await import(entry.href);
