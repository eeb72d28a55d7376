/**
 * Who uses the cache now, so that `cache prune` never removes what a running
 * build needs (docs/cache.md):
 *
 * - A build holds a lease, `leases/<pid>-<random>.json`, from before its
 *   first cache lookup until it ends.
 * - `cache prune` deletes only while it holds `prune.lock` and no live lease
 *   exists. It takes the lock, then looks at the leases: if any is live it
 *   drops the lock and waits for the builds to end.
 * - A build writes its lease, then looks for the lock: if a prune holds it,
 *   the build drops its lease, waits for the lock to go, and starts over.
 *
 * Either the prune sees the build's lease (and waits), or the build sees the
 * prune's lock (and waits): both look only after their own file exists.
 * A lease or lock whose process is gone (same host, dead pid) or that is
 * older than STALE_MS is ignored and removed.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { InputError } from '../errors.ts';
import { temporaryPathFor } from '../util/atomic.ts';
import { isCount, isObject, isString, type Cache } from './cache.ts';

/** What a lease or the lock file says about its holder. */
interface Holder {
  pid: number;
  host: string;
  /** Milliseconds since the epoch. */
  since: number;
}

/** A holder on another host (a shared cache) cannot be asked whether it lives; after this long it is assumed gone. */
const STALE_MS = 24 * 60 * 60 * 1000;
const POLL_MS = 100;
/** A prune holds its lock only while it deletes: a build waits at most this long for it. */
const LOCK_WAIT_MS = 10 * 60 * 1000;

const isHolder = (value: unknown): value is Holder => isObject(value) && isCount(value.pid) && isString(value.host) && isCount(value.since);

function me(): Holder {
  return { pid: process.pid, host: hostname(), since: Date.now() };
}

/** Whether process `pid` exists on this machine (EPERM: it does, under another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderAlive(holder: Holder): boolean {
  if (holder.host !== hostname()) return Date.now() - holder.since < STALE_MS;
  return processAlive(holder.pid);
}

function lockPath(cache: Cache): string {
  return join(cache.root, 'prune.lock');
}

/**
 * The live holder of `path`, removing the file when its holder is gone.
 * Holders' files appear whole (renamed or linked into place), so one that
 * does not parse is damaged: it is removed once it is a minute old.
 */
async function liveHolder(cache: Cache, path: string): Promise<Holder | undefined> {
  const holder = await cache.readRecord(path, isHolder, 'lease');
  if (holder && holderAlive(holder)) return holder;
  const info = await stat(path).catch(() => undefined);
  if (info && (holder || Date.now() - info.mtimeMs > 60_000)) await rm(path, { force: true });
  return undefined;
}

/** Writes `path` whole, failing with EEXIST when it exists: a hard link of a complete temporary is atomic and exclusive. */
async function createExclusively(path: string, content: string): Promise<void> {
  const temporary = temporaryPathFor(path);
  await writeFile(temporary, content);
  try {
    await link(temporary, path);
  } finally {
    await rm(temporary, { force: true });
  }
}

/** The builds using the cache now. */
export async function liveLeases(cache: Cache): Promise<Holder[]> {
  const folder = cache.folder('leases');
  const names = await readdir(folder).catch(() => [] as string[]);
  const holders = await Promise.all(names.filter((name) => name.endsWith('.json')).map((name) => liveHolder(cache, join(folder, name))));
  return holders.filter((holder) => holder !== undefined);
}

async function waitWhilePruning(cache: Cache): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  while (await liveHolder(cache, lockPath(cache))) {
    if (Date.now() > deadline) {
      throw new InputError(`${lockPath(cache)} has been held for over ${LOCK_WAIT_MS / 60_000} minutes by a running \`rampack cache prune\``, {
        hint: 'wait for it to end, or remove the file if no prune is running',
      });
    }
    await sleep(POLL_MS);
  }
}

export interface CacheLease {
  release(): Promise<void>;
}

/** Takes a lease on the cache for this process (a build); waits while a prune deletes. */
export async function leaseCache(cache: Cache): Promise<CacheLease> {
  await mkdir(cache.folder('leases'), { recursive: true });
  for (;;) {
    const path = join(cache.folder('leases'), `${process.pid}-${randomBytes(4).toString('hex')}.json`);
    await createExclusively(path, JSON.stringify(me()));
    if (!(await liveHolder(cache, lockPath(cache)))) return { release: () => rm(path, { force: true }) };
    await rm(path, { force: true });
    await waitWhilePruning(cache);
  }
}

/**
 * Runs `use` (a build, an inspection) under a lease on the cache, after
 * removing the temporaries that builds no longer running left behind.
 */
export async function withCacheLease<T>(cache: Cache, use: () => Promise<T>): Promise<T> {
  const lease = await leaseCache(cache);
  try {
    for (const path of await removeStaleTemporaries(cache)) cache.log.debug(`cache: removed the stale temporary ${path}`);
    return await use();
  } finally {
    await lease.release();
  }
}

/**
 * Runs `prune` once no build holds a lease, with the prune lock held (so no
 * build starts meanwhile). Waits up to `waitMs` for running builds; `onWait`
 * hears once that it waits, and for whom.
 */
export async function withPruneLock<T>(cache: Cache, waitMs: number, prune: () => Promise<T>, onWait: (builds: readonly Holder[]) => void): Promise<T> {
  await mkdir(cache.root, { recursive: true });
  const deadline = Date.now() + waitMs;
  let told = false;
  for (;;) {
    await takeLock(cache);
    const builds = await liveLeases(cache);
    if (builds.length === 0) {
      try {
        return await prune();
      } finally {
        await rm(lockPath(cache), { force: true });
      }
    }
    await rm(lockPath(cache), { force: true });
    if (Date.now() > deadline) {
      throw new InputError(`${builds.length} running build(s) use the cache (pid ${builds.map((build) => build.pid).join(', ')}); nothing was removed`, {
        hint: 'run `rampack cache prune` again when they are done, or give it longer with --wait SECONDS',
      });
    }
    if (!told) onWait(builds);
    told = true;
    await sleep(POLL_MS);
  }
}

async function takeLock(cache: Cache): Promise<void> {
  const path = lockPath(cache);
  for (;;) {
    try {
      await createExclusively(path, JSON.stringify(me()));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const other = await liveHolder(cache, path);
    if (other) throw new InputError(`another \`rampack cache prune\` (pid ${other.pid}) is running on ${cache.root}`, { hint: 'wait for it to end' });
  }
}

/** Temporaries in the cache: `.<name>.<pid>.<hex>.tmp` (util/atomic.ts) and `.<purpose>-<pid>-<random>` directories (Cache.temporaryDirectory). */
const TEMPORARY = [/^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/, /^\.[a-z]+-(\d+)-[A-Za-z0-9]{6}$/];
/** A temporary untouched this long whose process is gone is stale; one untouched for STALE_MS is, whoever wrote it. */
const IDLE_MS = 10 * 60 * 1000;

/** The pid in a temporary's name, if the name is one of the cache's temporaries. */
export function temporaryOwner(name: string): number | undefined {
  for (const pattern of TEMPORARY) {
    const match = pattern.exec(name);
    if (match) return Number(match[1]);
  }
  return undefined;
}

/** Removes stale temporaries (TEMPORARY names only) from the cache's folders; returns their paths. */
export async function removeStaleTemporaries(cache: Cache): Promise<string[]> {
  const folders = [cache.root, ...(['blobs', 'layers', 'shards', 'imageParts', 'outputs', 'leases'] as const).map((name) => cache.folder(name))];
  const removed: string[] = [];
  for (const folder of folders) {
    for (const name of await readdir(folder).catch(() => [] as string[])) {
      const pid = temporaryOwner(name);
      if (pid === undefined) continue;
      const path = join(folder, name);
      const info = await stat(path).catch(() => undefined);
      if (info === undefined) continue;
      const idle = Date.now() - info.mtimeMs;
      if (idle > STALE_MS || (idle > IDLE_MS && !processAlive(pid))) {
        await rm(path, { recursive: true, force: true });
        removed.push(path);
      }
    }
  }
  return removed;
}
