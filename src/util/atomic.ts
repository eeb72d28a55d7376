import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../errors.ts';

/** A unique temporary name next to `path`, so that a rename onto it is atomic. */
export function temporaryPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/** The names temporaryPathFor makes, with the writer's pid. */
const TEMPORARY_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;
/** A temporary untouched this long is abandoned even if its pid is alive again (pids are reused). */
const ABANDONED_AFTER_MS = 24 * 60 * 60 * 1000;

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, as another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the temporaries a killed writer left in `dir` (a build killed while
 * writing): only names of temporaryPathFor's pattern, and only when the pid
 * that wrote one is gone or it has not changed for a day, so a concurrent
 * writer's file is never taken from under it. Returns the names removed.
 */
export async function removeStaleTemporaries(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const pid = Number(TEMPORARY_NAME.exec(name)?.[1]);
    if (!pid || pid === process.pid) continue;
    const info = await lstat(join(dir, name)).catch(() => undefined);
    if (!info || (isRunning(pid) && Date.now() - info.mtimeMs < ABANDONED_AFTER_MS)) continue;
    await rm(join(dir, name), { force: true, recursive: true });
    removed.push(name);
  }
  return removed;
}

/**
 * Creates an output directory the user named (`flag` says which, e.g. --out);
 * a path that is a file, or that cannot be created, is the user's input error.
 */
export async function prepareOutputDirectory(path: string, flag: string): Promise<void> {
  try {
    await mkdir(path, { recursive: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const problem = code === 'EEXIST' || code === 'ENOTDIR' ? 'is (or is inside) a file, not a directory' : `cannot be created (${code ?? (error as Error).message})`;
    throw new InputError(`${flag} ${path} ${problem}`, { hint: `give ${flag} a directory path that can be created`, cause: error });
  }
}

/** prepareOutputDirectory for the directory of an output file the user named, which must not be a directory itself. */
export async function prepareOutputFile(path: string, flag: string): Promise<void> {
  await prepareOutputDirectory(dirname(path), `the directory of ${flag}`);
  if ((await lstat(path).catch(() => undefined))?.isDirectory()) {
    throw new InputError(`${flag} ${path} is a directory`, { hint: `give ${flag} the path of a file to write` });
  }
}

/**
 * Runs `write` against a temporary file beside `path`, then renames it into
 * place. On failure the temporary file is removed: nothing half-written is
 * ever left at the final name.
 */
export async function writeAtomically<T>(path: string, write: (temporaryPath: string) => Promise<T>): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  const temporary = temporaryPathFor(path);
  try {
    const result = await write(temporary);
    await rename(temporary, path);
    return result;
  } catch (error) {
    await rm(temporary, { force: true, recursive: true });
    throw error;
  }
}

export async function writeFileAtomically(path: string, data: string | Buffer): Promise<void> {
  await writeAtomically(path, (temporary) => writeFile(temporary, data));
}
