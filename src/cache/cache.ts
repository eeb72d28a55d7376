/**
 * rampack's cache directory (`~/.cache/rampack`, `--cache DIR`) and the one
 * place that knows its layout (docs/cache.md):
 *
 *   blobs/sha256/<hex>                  image blobs as pulled (registry/cache.ts writes them)
 *   layers/sha256/<diffid>.tar, .json   each layer uncompressed, and its entry index (layers/unpack.ts)
 *   shards/<key>.gz|.zst                compressed newc shards of image parts (pipeline/image-part.ts)
 *   rootfs/<key>.json                   an image part: its shards in order
 *   outputs/<sha256 of path>.json       what the last build wrote to an output file
 *   kernels/<arch>/                     Debian kernels for `verify --boot` (boot/kernel.ts)
 *   leases/, prune.lock                 who uses the cache now (cache/lease.ts)
 *   .<name>.<pid>.<hex>.tmp, .shards-<pid>-*   temporaries (util/atomic.ts, build/shard-workers.ts)
 *
 * Every record read back is checked against its shape: a damaged, foreign
 * or old record is a miss (logged), never an error. Whatever a build uses
 * is touched, so a file's mtime is its last use (what `cache prune` sorts by).
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, utimes } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import type { Arch } from '../oci/content.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { digestHex } from '../util/digest.ts';
import { silentLogger, type Logger } from '../util/log.ts';

/** `$XDG_CACHE_HOME/rampack`, else `~/.cache/rampack` (relative XDG paths are ignored, as the spec says). */
export function defaultCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache'), 'rampack');
}

/** The cache's top-level folders, by what they hold. */
export const CACHE_FOLDERS = {
  blobs: join('blobs', 'sha256'),
  layers: join('layers', 'sha256'),
  shards: 'shards',
  imageParts: 'rootfs',
  outputs: 'outputs',
  kernels: 'kernels',
  leases: 'leases',
} as const;

/** Whether `value` is what a record must be; `problem` says what is wrong, for the log. */
export type RecordCheck<T> = (value: unknown) => value is T;

export class Cache {
  readonly root: string;
  readonly log: Logger;

  /** `root` defaults to defaultCacheDir(); `log` hears of records that were not usable. */
  constructor(root: string = defaultCacheDir(), log: Logger = silentLogger) {
    this.root = resolve(root);
    this.log = log;
  }

  folder(name: keyof typeof CACHE_FOLDERS): string {
    return join(this.root, CACHE_FOLDERS[name]);
  }

  blobPath(digest: string): string {
    return join(this.folder('blobs'), digestHex(digest, 'blob digest'));
  }

  /** The uncompressed tar of a layer and its index. */
  layerPaths(diffId: string, layer: string): { tar: string; index: string } {
    const base = join(this.folder('layers'), digestHex(diffId, `diff_id of ${layer}`));
    return { tar: `${base}.tar`, index: `${base}.json` };
  }

  shardPath(file: string): string {
    return join(this.folder('shards'), file);
  }

  imagePartRecordPath(key: string): string {
    return join(this.folder('imageParts'), `${key}.json`);
  }

  /** The record of what was last written to the output file `output` (any absolute path). */
  outputRecordPath(output: string): string {
    return join(this.folder('outputs'), `${createHash('sha256').update(output).digest('hex')}.json`);
  }

  kernelDir(arch: Arch): string {
    return join(this.folder('kernels'), arch);
  }

  /** A fresh directory for one process's temporaries, named so that `cache prune` knows whose it is (see lease.ts). */
  async temporaryDirectory(purpose: string): Promise<string> {
    await mkdir(this.root, { recursive: true });
    return mkdtemp(join(this.root, `.${purpose}-${process.pid}-`));
  }

  /**
   * A JSON record, or undefined when it is missing or unusable: unreadable,
   * not JSON, or not of the shape `check` accepts (written by another
   * version, damaged, or not rampack's). Unusable records are logged.
   */
  async readRecord<T>(path: string, check: RecordCheck<T>, what: string): Promise<T | undefined> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn(`cache: cannot read ${what} ${path} (${(error as Error).message}); treating it as missing`);
      return undefined;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.log.warn(`cache: ${what} ${path} is not JSON; treating it as missing (it is rewritten)`);
      return undefined;
    }
    if (check(value)) return value;
    this.log.debug(`cache: ${what} ${path} is not in the current shape (another rampack version, or damaged); treating it as missing`);
    return undefined;
  }

  writeRecord(path: string, value: unknown): Promise<void> {
    return writeFileAtomically(path, JSON.stringify(value));
  }

  /** Marks cache files as used now: `cache prune` removes what was used longest ago. Files gone meanwhile are skipped. */
  async touch(...paths: string[]): Promise<void> {
    const now = new Date();
    await Promise.all(paths.map((path) => utimes(path, now, now).catch(() => {})));
  }
}

/** Small checks for record shapes (RecordCheck). */
export const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
export const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
export const isString = (value: unknown): value is string => typeof value === 'string';
