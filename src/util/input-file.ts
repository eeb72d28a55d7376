/**
 * Every file a user names (agent, extra files, recipes, manifests, fragments,
 * keys, signatures, configs, CA bundles) is read through here: it must be a
 * regular file no larger than its kind's limit, checked on the open
 * descriptor before a byte is read, and the read itself is bounded, so
 * `/dev/zero`, a FIFO, a directory or a file growing while it is read cannot
 * make rampack read forever or buffer gigabytes.
 */
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { InputError } from '../errors.ts';
import { formatBytes } from './log.ts';

const MiB = 1024 * 1024;

/** Largest accepted size of each kind of input file (docs/cli.md, LIMITS). */
export const INPUT_FILE_LIMITS = {
  /** Agents are static binaries of a few MiB; read whole to check their ELF header and hash them. */
  agent: 256 * MiB,
  /** Extra files of a recipe, read whole into the tree. */
  extraFile: 256 * MiB,
  recipe: 1 * MiB,
  /** manifest.json and fragments: a few hundred bytes per image. */
  manifest: 16 * MiB,
  key: 64 * 1024,
  signature: 1 * MiB,
  /** A slim variant's trace: one line per kept path. */
  trace: 16 * MiB,
  /** The runtime's state file of `manifest verify --state`: one serial and one digest. */
  state: 64 * 1024,
  /** rampack's config, docker's config.json, CA bundles. */
  config: 4 * MiB,
} as const;

/** Opening a FIFO with no writer would block: O_NONBLOCK returns at once, and the fstat below refuses it. */
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK;

export interface OpenedInput {
  handle: FileHandle;
  size: number;
}

function describeType(info: Stats): string {
  if (info.isDirectory()) return 'a directory';
  if (info.isFIFO()) return 'a FIFO';
  if (info.isCharacterDevice()) return 'a character device';
  if (info.isBlockDevice()) return 'a block device';
  if (info.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** The size of an opened file, if it is a regular file within `limit`. */
function checkedSize(info: Stats, path: string, what: string, limit: number): number {
  if (!info.isFile()) throw new InputError(`${what} ${path} is ${describeType(info)}`, { hint: `name a regular file as the ${what}` });
  if (info.size > limit) throw tooLarge(path, what, limit, info.size);
  return info.size;
}

function cannotOpen(error: NodeJS.ErrnoException, path: string, what: string, hint?: string): InputError {
  return new InputError(`cannot read ${what} ${path}: ${error.code ?? error.message}`, { hint, cause: error });
}

/**
 * Opens `path` for reading if it is a regular file of at most `limit` bytes
 * (no limit: any size). `what` names it in errors ("agent", "recipe"); `hint`
 * says what to do when it cannot be opened.
 * The caller closes the handle.
 */
export async function openInputFile(path: string, what: string, limit = Number.POSITIVE_INFINITY, hint?: string): Promise<OpenedInput> {
  const handle = await open(path, OPEN_FLAGS).catch((error: NodeJS.ErrnoException) => {
    throw cannotOpen(error, path, what, hint);
  });
  try {
    return { handle, size: checkedSize(await handle.stat(), path, what, limit) };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** Whether `error` (from openInputFile or readInputFile) says the file does not exist. */
export function isMissingFile(error: unknown): boolean {
  return error instanceof InputError && (error.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** `size` is what fstat said; without it, the file grew past the limit while it was read. */
function tooLarge(path: string, what: string, limit: number, size?: number): InputError {
  const how = size === undefined ? 'grew past' : `is ${formatBytes(size)}, over`;
  return new InputError(`${what} ${path} ${how} the size limit of ${formatBytes(limit)}`, {
    hint: `rampack reads at most ${formatBytes(limit)} as the ${what} (docs/cli.md, LIMITS)`,
  });
}

/** The whole content of a regular file of at most `limit` bytes; a file that grows past it while read is refused. */
export async function readInputFile(path: string, what: string, limit: number, hint?: string): Promise<Buffer> {
  const { handle, size } = await openInputFile(path, what, limit, hint);
  try {
    // One byte more than the size: reading it means the file grew since fstat, and the buffer grows up to limit + 1.
    let buffer = Buffer.allocUnsafe(Math.min(size, limit) + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > limit) throw tooLarge(path, what, limit);
      if (length === buffer.length) buffer = Buffer.concat([buffer, Buffer.allocUnsafe(Math.min(buffer.length, limit + 1 - length))]);
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

/** readInputFile as UTF-8 text. */
export async function readInputText(path: string, what: string, limit: number, hint?: string): Promise<string> {
  return (await readInputFile(path, what, limit, hint)).toString('utf8');
}

/**
 * readInputText for the few places that must stay synchronous (the CA bundle,
 * read as a registry connection is set up). A file smaller than it was at fstat
 * time reads short; one larger is read up to its fstat size, at most `limit`.
 */
export function readInputTextSync(path: string, what: string, limit: number, hint?: string): string {
  let descriptor: number;
  try {
    descriptor = openSync(path, OPEN_FLAGS);
  } catch (error) {
    throw cannotOpen(error as NodeJS.ErrnoException, path, what, hint);
  }
  try {
    const buffer = Buffer.allocUnsafe(checkedSize(fstatSync(descriptor), path, what, limit));
    let length = 0;
    while (length < buffer.length) {
      const read = readSync(descriptor, buffer, length, buffer.length - length, length);
      if (read === 0) break;
      length += read;
    }
    return buffer.toString('utf8', 0, length);
  } finally {
    closeSync(descriptor);
  }
}
