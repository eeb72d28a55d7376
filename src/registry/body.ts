/** Response bodies rampack does not read to the end. */
import type { HttpResponse } from './transport.ts';

/**
 * Abandons a response's body, closing its connection. A body being read is
 * locked by its reader, which cancels it when it stops; and a cancel that fails
 * has nothing left to report, so it never becomes an unhandled rejection.
 */
export function discardBody(response: HttpResponse | undefined): void {
  const body = response?.body;
  if (body && !body.locked) body.cancel().catch(() => {});
}
