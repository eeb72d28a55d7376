/**
 * Registry settings a process takes from its environment: knobs for slow or
 * flaky links in CI (and for fast fault-injection tests) that do not deserve
 * a flag each. Proxies (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) are read by the
 * transport itself.
 */
import { UsageError } from '../errors.ts';
import type { RegistryOptions } from './store.ts';

function milliseconds(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const text = env[name];
  if (text === undefined || text === '') return undefined;
  if (!/^\d+$/.test(text)) throw new UsageError(`${name} must be a whole number of milliseconds, not "${text}"`);
  return Number(text);
}

/** RAMPACK_RETRY_BASE_MS (first retry backoff) and RAMPACK_STALL_TIMEOUT_MS (abort a silent transfer). */
export function registryEnvironment(env: NodeJS.ProcessEnv = process.env): Pick<RegistryOptions, 'retryBaseMs' | 'stallTimeoutMs'> {
  return { retryBaseMs: milliseconds(env, 'RAMPACK_RETRY_BASE_MS'), stallTimeoutMs: milliseconds(env, 'RAMPACK_STALL_TIMEOUT_MS') };
}
