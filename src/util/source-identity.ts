/**
 * The identity of the code that writes a cached file: a hash of a module's
 * source and of every module of rampack it imports, directly or not. Caches
 * key on it instead of a format number someone must remember to bump: any
 * edit to that code (a release, or a working copy) makes new keys, so bytes
 * written by older code are never served as if the current code wrote them.
 * An edit that changes no byte (a comment) only costs one rewrite.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Relative specifiers of static imports and re-exports: statements that start a line and end in
 * `from './x.ts'` (sources) or `from "../y.js"` (as tsc emits them); comments that mention one do not count.
 */
const RELATIVE_IMPORT = /^\s*(?:import|export)\b[^;]*?\bfrom\s+(['"])(\.{1,2}\/[^'"]+)\1/gm;

const identities = new Map<string, string>();

/** sha256 (hex) over the sources of `moduleUrl` and its relative imports, in a fixed order; memoized per process. */
export function sourceIdentity(moduleUrl: string | URL): string {
  const url = new URL(moduleUrl).href;
  let identity = identities.get(url);
  if (identity === undefined) {
    const hash = createHash('sha256');
    for (const source of moduleGraph(url)) hash.update(`${source.length}:`).update(source);
    identities.set(url, (identity = hash.digest('hex')));
  }
  return identity;
}

/** The sources of the module and of everything it reaches through relative imports, depth first, each once. */
function moduleGraph(rootUrl: string): string[] {
  const seen = new Set<string>();
  const sources: string[] = [];
  const pending = [rootUrl];
  // A work list, not recursion: the graph is rampack's own, but its depth is no reason to use the stack.
  while (pending.length > 0) {
    const url = pending.pop()!;
    if (seen.has(url)) continue;
    seen.add(url);
    const source = readFileSync(fileURLToPath(url), 'utf8');
    sources.push(source);
    const imports = [...source.matchAll(RELATIVE_IMPORT)].map((match) => new URL(match[2]!, url).href);
    pending.push(...imports.sort().reverse());
  }
  return sources;
}

/** The module `name` beside `moduleUrl`, with its extension: sources run as .ts (tests, scripts), the package as .js. */
export function siblingModuleUrl(moduleUrl: string, name: string): URL {
  return new URL(`./${name}${extname(fileURLToPath(moduleUrl))}`, moduleUrl);
}
