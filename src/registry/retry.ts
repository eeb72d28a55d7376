/**
 * Bounded retries with exponential backoff and jitter, for failures that may
 * go away: lost connections, stalls, 5xx, 408 and 429 (whose Retry-After is
 * honoured up to a cap; a longer wait fails at once, since sleeping for
 * minutes helps nobody). Bounded twice: in attempts, and in the time spent
 * waiting, so many slow failures cannot add up to an hour.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryError } from '../errors.ts';
import { discardBody } from './body.ts';
import type { HttpResponse } from './transport.ts';

export const DEFAULT_MAX_ATTEMPTS = 5;
export const DEFAULT_BASE_DELAY_MS = 500;
/** No single wait is longer than 16 base delays (8 s by default). */
const MAX_DELAY_FACTOR = 16;
const MAX_RETRY_AFTER_MS = 60_000;
/** Give up once an operation has been failing for this long, whatever the attempt count. */
export const DEFAULT_MAX_RETRY_TIME_MS = 120_000;
const RETRYABLE_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

/** A failure worth another attempt. */
export class TransientError extends Error {
  readonly retryAfterMs?: number;
  readonly status?: number;
  constructor(message: string, options?: { retryAfterMs?: number; status?: number; cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.retryAfterMs = options?.retryAfterMs;
    this.status = options?.status;
  }
}

export interface RetryPolicy {
  maxAttempts: number;
  /** First backoff; each further one doubles (default 500 ms). */
  baseDelayMs?: number;
  /** No retry starts later than this after the first attempt (default 2 min). */
  maxRetryTimeMs?: number;
  /** Told about each retry, for the debug log. */
  onRetry?: (message: string) => void;
}

/** What to tell the user when an operation failed for good. */
export interface FailureContext {
  /** "GET manifest of docker.io/library/golang:1.22", and the like. */
  what: string;
  hint: string;
}

/** Retry-After is either seconds or an HTTP date. */
function parseRetryAfter(value: string | null): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** Throws a TransientError for a response worth retrying; returns it otherwise. */
export function checkTransient(response: HttpResponse, what: string): HttpResponse {
  if (!RETRYABLE_STATUSES.has(response.status)) return response;
  discardBody(response);
  throw new TransientError(`${what} answered HTTP ${response.status} ${response.statusText}`.trimEnd(), {
    status: response.status,
    retryAfterMs: parseRetryAfter(response.headers.get('retry-after')),
  });
}

/** A network error in a few words: its code ("ECONNRESET") when it has one, else its message. */
export function describeNetworkError(error: unknown): string {
  if (error instanceof TransientError) return error.message;
  return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
}

/** Exponential, with ±20% jitter so that parallel downloads do not retry in lockstep. */
function backoff(attempt: number, baseMs: number): number {
  const exponential = baseMs * Math.min(MAX_DELAY_FACTOR, 2 ** (attempt - 1));
  return exponential * (0.8 + Math.random() * 0.4);
}

/** Runs `operation` until it succeeds, fails for good, or runs out of attempts. */
export async function withRetries<T>(policy: RetryPolicy, context: FailureContext, operation: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + (policy.maxRetryTimeMs ?? DEFAULT_MAX_RETRY_TIME_MS);
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (!(error instanceof TransientError)) throw error;
      const fail = (why: string) =>
        new RegistryError(`${context.what} failed: ${error.message}${why}`, { hint: context.hint, status: error.status, cause: error });
      if (error.retryAfterMs !== undefined && error.retryAfterMs > MAX_RETRY_AFTER_MS) {
        throw fail(` and the registry asks to wait ${Math.ceil(error.retryAfterMs / 1000)} s`);
      }
      if (attempt >= policy.maxAttempts) throw fail(attempt > 1 ? ` (gave up after ${attempt} attempts)` : '');
      const delay = error.retryAfterMs ?? backoff(attempt, policy.baseDelayMs ?? DEFAULT_BASE_DELAY_MS);
      if (Date.now() + delay > deadline) throw fail(` (gave up after ${attempt} attempts: the retry time is up)`);
      policy.onRetry?.(`${context.what}: ${error.message}; attempt ${attempt + 1}/${policy.maxAttempts} in ${Math.round(delay)} ms`);
      await sleep(delay);
    }
  }
}
