import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

/** A fresh directory in the OS temp dir, removed once the enclosing file's (or describe's) tests are done. */
export function testDirectory(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `rampack-${name}-`));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
