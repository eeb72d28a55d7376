/**
 * Compiles native/inflate.c (gunzip through ISA-L) into
 * dist/native/inflate.node. The addon is optional: without a C compiler or
 * libisal-dev this says so in one line, succeeds, and rampack gunzips with
 * node:zlib.
 *
 *   node scripts/build-native-inflate.ts
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const INFLATE_SOURCE = join(ROOT, 'native', 'inflate.c');
export const INFLATE_ADDON = join(ROOT, 'dist', 'native', 'inflate.node');
const INSTALL = 'apt-get install gcc libisal-dev';

export interface AddonBuild {
  built: boolean;
  /** One line for the log: what was built, or why not. */
  message: string;
}

/**
 * Where node_api.h is: beside the running Node (official tarballs), in the
 * npm `node` package's platform package (the pinned Node, whose bin/node is
 * a copy without headers beside it), or Debian's nodejs headers.
 */
function nodeHeaderCandidates(): string[] {
  const candidates = [join(dirname(process.execPath), '..', 'include', 'node')];
  try {
    const nodePackage = createRequire(join(ROOT, 'package.json')).resolve('node/package.json');
    const platformPackage = `node-${process.platform}-${process.arch}/package.json`;
    candidates.push(join(dirname(createRequire(nodePackage).resolve(platformPackage)), 'include', 'node'));
  } catch {
    // not installed through npm: the other places remain
  }
  candidates.push('/usr/include/node');
  return candidates;
}

function compilerMissing(cc: string): boolean {
  return spawnSync(cc, ['--version'], { stdio: 'ignore' }).error !== undefined;
}

/** Compiles the addon unless cc, Node's headers or libisal-dev are missing; throws when the C code itself fails to compile. */
export function buildInflateAddon(options: { warningsAsErrors?: boolean } = {}): AddonBuild {
  const cc = process.env.CC || 'cc';
  const skipped = (why: string): AddonBuild => ({ built: false, message: `ISA-L addon not built (${why}); gunzip uses node:zlib. For faster builds: ${INSTALL}` });
  if (compilerMissing(cc)) return skipped(`no C compiler: ${cc}`);
  const headers = nodeHeaderCandidates().find((dir) => existsSync(join(dir, 'node_api.h')));
  if (headers === undefined) return skipped(`node_api.h not found in ${nodeHeaderCandidates().join(', ')}`);
  mkdirSync(dirname(INFLATE_ADDON), { recursive: true });
  const temporary = `${INFLATE_ADDON}.${process.pid}.tmp`;
  const args = ['-O2', '-fPIC', '-shared', '-Wall', '-Wextra', ...(options.warningsAsErrors ? ['-Werror'] : []), `-I${headers}`];
  const compiled = spawnSync(cc, [...args, INFLATE_SOURCE, '-o', temporary, '-lisal'], { encoding: 'utf8' });
  if (compiled.status !== 0) {
    rmSync(temporary, { force: true });
    if (/isa-l\.h|-lisal/.test(compiled.stderr)) return skipped('libisal-dev is not installed');
    throw new Error(`${cc} failed to compile ${INFLATE_SOURCE}:\n${compiled.stderr}`);
  }
  renameSync(temporary, INFLATE_ADDON);
  return { built: true, message: `built ${INFLATE_ADDON} (ISA-L gunzip)` };
}

if (import.meta.main) console.log(buildInflateAddon().message);
