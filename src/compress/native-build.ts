/**
 * Building rampack's optional native addons into dist/native/ (run by
 * `npm run build:native` through scripts/build-native.ts in a checkout, and
 * by the package's install script, bin/install.js, where rampack is
 * installed from a tarball or a registry):
 *   deflate.node  gzip of whole shards through libdeflate (native/deflate.c,
 *                 native-deflate.ts), libdeflate linked in
 *   inflate.node  streaming gunzip of layers through ISA-L (native/inflate.c,
 *                 native-inflate.ts), linked to libisal.so.2
 * Without a C compiler or a library's files it prints one line per addon
 * and succeeds: rampack then uses node:zlib for that part, only slower.
 * It lives in src/ so that the package ships it compiled (Node runs no
 * TypeScript inside node_modules).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADDON_PATH as DEFLATE_ADDON } from './native-deflate.ts';
import { INFLATE_ADDON_PATH as INFLATE_ADDON } from './native-inflate.ts';

interface Link {
  linked: 'statically' | 'dynamically';
  flags: readonly string[];
}

export interface AddonSpec {
  /** What it does, for messages. */
  purpose: string;
  library: string;
  source: string;
  output: string;
  /** A C snippet that needs the library's header and one of its functions. */
  probe: string;
  /** Tried in order: the first that links is used. */
  links: readonly Link[];
  install: string;
  /** What rampack does without the addon. */
  fallback: string;
}

export const ADDONS: readonly AddonSpec[] = [
  {
    purpose: 'gzip of shards',
    library: 'libdeflate',
    source: fileURLToPath(new URL('../../native/deflate.c', import.meta.url)),
    output: DEFLATE_ADDON,
    probe: '#include <libdeflate.h>\nvoid *probe(void) { return libdeflate_alloc_compressor(6); }\n',
    // Static first: the addon then needs nothing at run time (Debian's libdeflate.a
    // is PIC); --exclude-libs keeps libdeflate's symbols private to the addon.
    links: [
      { linked: 'statically', flags: ['-l:libdeflate.a', '-Wl,--exclude-libs,ALL'] },
      { linked: 'dynamically', flags: ['-ldeflate'] },
    ],
    install: 'apt-get install gcc libdeflate-dev',
    fallback: 'gzip falls back to node:zlib (about half as fast)',
  },
  {
    purpose: 'gunzip of layers',
    library: 'ISA-L',
    source: fileURLToPath(new URL('../../native/inflate.c', import.meta.url)),
    output: INFLATE_ADDON,
    probe: '#include <isa-l.h>\nvoid probe(struct inflate_state *state) { isal_inflate_init(state); }\n',
    // Debian ships no static libisal.
    links: [{ linked: 'dynamically', flags: ['-lisal'] }],
    install: 'apt-get install gcc libisal-dev',
    fallback: 'gunzip falls back to node:zlib (a fifth slower)',
  },
];

export type AddonBuild =
  | { built: string; version: string; linked: string; missing?: undefined }
  | { missing: string; /** What to run about it. */ remedy: string };

/** The C compiler's result for `source` (stdin) with `args`. */
function cc(args: readonly string[], source = ''): { ok: boolean; stderr: string } {
  const result = spawnSync(process.env.CC || 'cc', args, { input: source, encoding: 'utf8' });
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

function linkFor(spec: AddonSpec): Link | undefined {
  return spec.links.find(({ flags }) => cc(['-x', 'c', '-', '-fPIC', '-shared', '-o', '/dev/null', ...flags], spec.probe).ok);
}

/** Loads a freshly built addon, so a broken one never replaces a working one. */
function loadedVersion(path: string): string {
  return (createRequire(import.meta.url)(path) as { version(): string }).version();
}

/**
 * Builds one addon (written under a temporary name, loaded, then renamed).
 * Returns what is missing when the machine cannot build it; throws when the
 * compiler fails on a machine that has everything.
 */
export function buildAddon(spec: AddonSpec, options: { warningsAsErrors?: boolean } = {}): AddonBuild {
  if (!cc(['--version']).ok) return { missing: 'no C compiler (cc)', remedy: spec.install };
  const headers = nodeHeaders();
  if (headers === undefined) return { missing: `no Node-API headers (node_api.h) for ${process.execPath}`, remedy: 'install Node from nodejs.org or the npm `node` package (both ship the headers)' };
  const link = linkFor(spec);
  if (link === undefined) return { missing: `no ${spec.library} header or library`, remedy: spec.install };
  mkdirSync(dirname(spec.output), { recursive: true });
  // Ends in .node: require() loads it by extension.
  const temporary = join(dirname(spec.output), `.${process.pid}-${basename(spec.output)}`);
  const warnings = ['-Wall', '-Wextra', ...(options.warningsAsErrors ? ['-Werror'] : [])];
  try {
    const compiled = cc(['-O2', '-fPIC', '-shared', '-fvisibility=hidden', ...warnings, '-I', headers, '-o', temporary, spec.source, ...link.flags]);
    if (!compiled.ok) throw new Error(`cc could not build ${spec.source}:\n${compiled.stderr}`);
    const version = loadedVersion(temporary);
    renameSync(temporary, spec.output);
    return { built: spec.output, version, linked: link.linked };
  } finally {
    rmSync(temporary, { force: true });
  }
}

function report(spec: AddonSpec, rebuild: string): string {
  const notBuilt = `build-native: ${spec.library} addon (${spec.purpose}) not built`;
  try {
    const result = buildAddon(spec);
    return result.missing === undefined
      ? `build-native: built ${result.built} (${spec.library} ${result.version}, linked ${result.linked})`
      : `${notBuilt}: ${result.missing}; run \`${result.remedy}\`, then \`${rebuild}\`; until then ${spec.fallback}`;
  } catch (error) {
    // Never fail `npm ci` over an optional speed-up; the test setup does fail on this.
    return `${(error as Error).message}\n${notBuilt} (see above); ${spec.fallback}`;
  }
}

/** Builds every addon it can and says on stderr, one line per addon, what was built or what is missing and how to build it later (`rebuild`). */
export function buildNativeAddons(rebuild: string): void {
  for (const spec of ADDONS) process.stderr.write(`${report(spec, rebuild)}\n`);
}
