/**
 * Makes sure the libdeflate addon is built and loads, so gzip tests and the
 * benchmark run on it: without it they would quietly measure node:zlib twice.
 */
import { existsSync, statSync } from 'node:fs';
import { buildNativeAddon } from '../../scripts/build-native.ts';
import { ADDON_PATH, loadNativeDeflate, type NativeDeflate } from '../../src/compress/native-deflate.ts';
import { ensureTools, TOOLS } from './system.ts';

const SOURCE = new URL('../../native/deflate.c', import.meta.url);

function upToDate(): boolean {
  return existsSync(ADDON_PATH) && statSync(ADDON_PATH).mtimeMs >= statSync(SOURCE).mtimeMs;
}

/** Installs gcc and libdeflate-dev, builds the addon when it is missing or older than its source; throws when it still does not load. */
export function ensureNativeAddon(): NativeDeflate {
  if (!upToDate()) {
    ensureTools(TOOLS.gcc, TOOLS.libdeflate);
    const result = buildNativeAddon();
    if (result.missing !== undefined) throw new Error(`the libdeflate addon cannot be built: ${result.missing} (${result.remedy})`);
  }
  const { addon, unavailable } = loadNativeDeflate();
  if (addon === undefined) throw new Error(`the libdeflate addon is needed here: ${unavailable}`);
  return addon;
}
