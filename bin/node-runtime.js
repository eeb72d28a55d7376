// Finding a Node that can run rampack (>= 22.15: zstd in node:zlib), for the
// launcher (rampack.js) and the install script (install.js). Plain
// JavaScript that any Node parses, so that an older one can say what to do.
import { existsSync } from 'node:fs';
import module from 'node:module';
import { dirname, join } from 'node:path';

/** Whether the running Node can run rampack. */
export function nodeIsRecentEnough() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  return major > 22 || (major === 22 && minor >= 15);
}

/**
 * The Node binary of npm's `node` package, which rampack lists as an optional
 * dependency: beside rampack in a checkout, or wherever npm put it in the
 * project that installed rampack (resolved as an import would be).
 */
function pinnedNode() {
  try {
    const binary = join(dirname(module.createRequire(import.meta.url).resolve('node/package.json')), 'bin', 'node');
    return existsSync(binary) ? binary : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs `script` with `args` under the pinned Node when this one is too old,
 * and exits with its status; returns when this Node is recent enough. Exits
 * with a message saying what to install when there is no Node to use.
 */
export function rerunUnderRecentNode(script, args, nodeFlags = []) {
  if (nodeIsRecentEnough()) return;
  const pinned = pinnedNode();
  if (pinned === undefined) {
    process.stderr.write(
      `rampack: error: Node ${process.versions.node} is too old; rampack needs Node >= 22.15\n` +
        'rampack: hint: install a newer Node (https://nodejs.org), or install rampack with its optional dependencies (npm installs the `node` package, a Node 24)\n',
    );
    process.exit(1);
  }
  // Required here, not imported: only a Node too old for rampack needs it.
  const { spawnSync } = module.createRequire(import.meta.url)('node:child_process');
  const result = spawnSync(pinned, [...nodeFlags, script, ...args], { stdio: 'inherit' });
  process.exit(result.status ?? 1);
}
