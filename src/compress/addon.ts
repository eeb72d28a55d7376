/**
 * Loading rampack's optional native addons (dist/native/*.node, built by
 * scripts/build-native.ts) and the environment switches that turn them off.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { InputError } from '../errors.ts';

export type LoadedAddon<T> = { addon: T; unavailable?: undefined } | { addon?: undefined; unavailable: string };

/** dist/native/<file>: src/ and dist/ sit at the same depth, so this holds from either. */
export function addonPath(file: string): string {
  return fileURLToPath(new URL(`../../dist/native/${file}`, import.meta.url));
}

/** A loader of the addon at `path` that tries once per thread, then answers the same; `install` says how to get it built. */
export function addonLoader<T>(path: string, library: string, install: string): () => LoadedAddon<T> {
  let loaded: LoadedAddon<T> | undefined;
  const load = (): LoadedAddon<T> => {
    if (!existsSync(path)) return { unavailable: `the ${library} addon is not built (${install}, then npm run build:native)` };
    try {
      return { addon: createRequire(import.meta.url)(path) as T };
    } catch (error) {
      // Typically a shared library it links is missing.
      return { unavailable: `the ${library} addon did not load (${(error as Error).message.split('\n')[0]})` };
    }
  };
  return () => (loaded ??= load());
}

/** Whether `variable` asks for node:zlib instead of the addon; any value other than "zlib" or none is a mistake worth saying. */
export function zlibForced(variable: string, library: string, task: string): boolean {
  const choice = process.env[variable];
  if (choice === undefined || choice === '') return false;
  if (choice === 'zlib') return true;
  throw new InputError(`${variable}=${choice} is not understood`, {
    hint: `set ${variable}=zlib to ${task} with node:zlib, or unset it to use ${library} when its addon is built`,
  });
}
