/**
 * Makes sure the native addons are built and load, so the gzip and gunzip
 * tests and the benchmark run on them: without them they would quietly
 * measure node:zlib twice.
 */
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ADDONS, buildAddon, type AddonSpec } from '../../src/compress/native-build.ts';
import type { LoadedAddon } from '../../src/compress/addon.ts';
import { loadNativeDeflate, type NativeDeflate } from '../../src/compress/native-deflate.ts';
import { loadNativeInflate, type NativeInflate } from '../../src/compress/native-inflate.ts';
import { ensureTools, TOOLS } from './system.ts';

/** The header every addon includes beside its own source. */
const SHARED_HEADER = fileURLToPath(new URL('../../native/addon.h', import.meta.url));

function upToDate(spec: AddonSpec): boolean {
  return existsSync(spec.output) && [spec.source, SHARED_HEADER].every((input) => statSync(spec.output).mtimeMs >= statSync(input).mtimeMs);
}

function loaded<T>(result: LoadedAddon<T>): T {
  if (result.addon === undefined) throw new Error(`a native addon is needed here: ${result.unavailable}`);
  return result.addon;
}

/**
 * Installs gcc, libdeflate-dev and libisal-dev, builds each addon when it is
 * missing or older than its source (warnings are errors here, never in
 * `npm ci`), and throws when one still does not load.
 */
export function ensureNativeAddons(): { deflate: NativeDeflate; inflate: NativeInflate } {
  for (const spec of ADDONS.filter((addon) => !upToDate(addon))) {
    ensureTools(TOOLS.gcc, TOOLS.libdeflate, TOOLS.isal);
    const result = buildAddon(spec, { warningsAsErrors: true });
    if (result.missing !== undefined) throw new Error(`the ${spec.library} addon cannot be built: ${result.missing} (${result.remedy})`);
  }
  return { deflate: loaded(loadNativeDeflate()), inflate: loaded(loadNativeInflate()) };
}
