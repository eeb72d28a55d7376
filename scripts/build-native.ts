/**
 * npm run build:native (also the last step of `build` and `prepare`):
 * compiles native/deflate.c into dist/native/deflate.node, the addon that
 * gzips shards through libdeflate (src/compress/native-deflate.ts), with
 * libdeflate linked in. The addon is optional: without a C compiler or
 * libdeflate's files this prints one line and exits 0, and gzip uses node:zlib.
 *
 *   node scripts/build-native.ts
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADDON_PATH, type NativeDeflate } from '../src/compress/native-deflate.ts';

const SOURCE = fileURLToPath(new URL('../native/deflate.c', import.meta.url));
const INSTALL = 'apt-get install gcc libdeflate-dev';

/** Static first: the addon then needs nothing at run time (Debian's libdeflate.a is PIC, so it links into a shared object). */
const LINKS = [
  // --exclude-libs keeps libdeflate's symbols private to the addon.
  { linked: 'statically', flags: ['-l:libdeflate.a', '-Wl,--exclude-libs,ALL'] },
  { linked: 'dynamically', flags: ['-ldeflate'] },
] as const;

export type NativeBuild =
  | { built: string; version: string; linked: string; missing?: undefined }
  | { missing: string; /** What to run about it. */ remedy: string };

/** The C compiler's result for `source` (stdin) with `args`. */
function cc(args: readonly string[], source = ''): { ok: boolean; stderr: string } {
  const result = spawnSync('cc', args, { input: source, encoding: 'utf8' });
  return { ok: result.status === 0, stderr: result.error?.message ?? result.stderr };
}

/**
 * Node-API headers for the running Node: beside its binary (an unpacked Node
 * release), in npm's `node` package (whose bin/node is a copy of
 * node-<platform>-<arch>/bin/node), or Debian's.
 */
function nodeHeaders(): string | undefined {
  const bin = dirname(process.execPath);
  return [
    join(bin, '..', 'include', 'node'),
    join(bin, '..', 'node_modules', `node-${process.platform}-${process.arch}`, 'include', 'node'),
    '/usr/include/node',
  ].find((dir) => existsSync(join(dir, 'node_api.h')));
}

const LINK_PROBE = '#include <libdeflate.h>\nvoid *probe(void) { return libdeflate_alloc_compressor(6); }\n';

function linkFlags(): (typeof LINKS)[number] | undefined {
  return LINKS.find(({ flags }) => cc(['-x', 'c', '-', '-fPIC', '-shared', '-o', '/dev/null', ...flags], LINK_PROBE).ok);
}

/** Loads a freshly built addon, so a broken one never replaces a working one. */
function loadedVersion(path: string): string {
  return (createRequire(import.meta.url)(path) as NativeDeflate).version();
}

/**
 * Builds the addon into `output` (written under a temporary name, then
 * renamed). Returns what is missing when the machine cannot build it; throws
 * when the compiler fails on a machine that has everything.
 */
export function buildNativeAddon(output = ADDON_PATH): NativeBuild {
  if (!cc(['--version']).ok) return { missing: 'no C compiler (cc)', remedy: INSTALL };
  const headers = nodeHeaders();
  if (headers === undefined) return { missing: `no Node-API headers (node_api.h) for ${process.execPath}`, remedy: 'npm ci (the pinned node package ships them)' };
  if (!cc(['-E', '-x', 'c', '-', '-o', '/dev/null'], '#include <libdeflate.h>\n').ok) return { missing: 'no libdeflate header (libdeflate.h)', remedy: INSTALL };
  const link = linkFlags();
  if (link === undefined) return { missing: 'no libdeflate library to link (libdeflate.a or libdeflate.so)', remedy: INSTALL };
  mkdirSync(dirname(output), { recursive: true });
  // Ends in .node: require() loads it by extension.
  const temporary = join(dirname(output), `.${process.pid}-${basename(output)}`);
  try {
    const compiled = cc(['-O2', '-fPIC', '-shared', '-fvisibility=hidden', '-Wall', '-Wextra', '-I', headers, '-o', temporary, SOURCE, ...link.flags]);
    if (!compiled.ok) throw new Error(`cc could not build ${SOURCE}:\n${compiled.stderr}`);
    const version = loadedVersion(temporary);
    renameSync(temporary, output);
    return { built: output, version, linked: link.linked };
  } finally {
    rmSync(temporary, { force: true });
  }
}

function main(): void {
  const fallback = 'gzip falls back to node:zlib (about half as fast)';
  try {
    const result = buildNativeAddon();
    process.stderr.write(
      result.missing === undefined
        ? `build-native: built ${result.built} (libdeflate ${result.version}, linked ${result.linked})\n`
        : `build-native: libdeflate addon not built: ${result.missing}; run \`${result.remedy}\`, then \`npm run build:native\`; until then ${fallback}\n`,
    );
  } catch (error) {
    // Never fail `npm ci` over an optional speed-up; the test setup does fail on this.
    process.stderr.write(`${(error as Error).message}\nbuild-native: libdeflate addon not built (see above); ${fallback}\n`);
  }
}

if (import.meta.main) main();
