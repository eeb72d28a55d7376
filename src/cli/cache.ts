/** `rampack cache ls|prune`: what the cache holds, and removing what was used least recently (docs/cache.md). */
import { Command, Option } from 'commander';
import { Cache } from '../cache/cache.ts';
import { cacheEntries, pruneCache, type CacheEntry } from '../cache/inventory.ts';
import { withPruneLock } from '../cache/lease.ts';
import { RampackError, UsageError } from '../errors.ts';
import { parseByteSize } from '../inspect/size.ts';
import { formatBytes, lineLogger } from '../util/log.ts';
import { columns, printJson, printLines } from './format.ts';

interface CacheFlags {
  cache?: string;
  json?: boolean;
}

interface PruneFlags extends CacheFlags {
  olderThan?: number;
  maxSize?: number;
  wait: number;
}

const DURATION_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };

/** "30d" -> milliseconds. */
function parseDuration(text: string): number {
  const match = /^(\d+)(s|m|h|d|w)$/.exec(text.trim());
  if (match === null) throw new UsageError(`--older-than takes a number and a unit (s, m, h, d or w), e.g. 30d, not "${text}"`);
  return Number(match[1]) * DURATION_UNITS[match[2]!]!;
}

function parseSize(text: string): number {
  try {
    return parseByteSize(text, '--max-size');
  } catch (error) {
    throw new UsageError((error as RampackError).message, { hint: (error as RampackError).hint });
  }
}

function parseSeconds(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`--wait takes whole seconds, not "${text}"`);
  return Number(text) * 1000;
}

function ago(milliseconds: number): string {
  const [unit, size] = Object.entries(DURATION_UNITS).reverse().find(([, size]) => milliseconds >= size) ?? ['s', 1000];
  return `${Math.floor(milliseconds / size)}${unit} ago`;
}

function entryRows(entries: readonly CacheEntry[], now: number): string[][] {
  return entries.map((entry) => [entry.kind, formatBytes(entry.bytes), ago(now - entry.lastUse), entry.name]);
}

/** An entry as `--json` shows it: last use as an ISO date, no file list. */
function jsonEntry({ kind, name, bytes, lastUse }: CacheEntry) {
  return { kind, name, bytes, lastUse: new Date(lastUse).toISOString() };
}

const total = (entries: readonly CacheEntry[]) => entries.reduce((sum, entry) => sum + entry.bytes, 0);

async function runList(flags: CacheFlags): Promise<void> {
  const cache = new Cache(flags.cache, lineLogger({ quiet: true }));
  const entries = await cacheEntries(cache);
  if (flags.json) {
    printJson({ cache: cache.root, bytes: total(entries), entries: entries.map(jsonEntry) });
    return;
  }
  const now = Date.now();
  const rows = columns([['KIND', 'SIZE', 'LAST USE', 'NAME'], ...entryRows(entries, now)]);
  printLines([`${cache.root}: ${entries.length} entries, ${formatBytes(total(entries))}`, ...(entries.length > 0 ? rows : [])]);
}

async function runPrune(flags: PruneFlags): Promise<void> {
  // Log lines (waiting for builds) go to stderr also with --json, which owns stdout.
  const log = lineLogger();
  const cache = new Cache(flags.cache, log);
  const onWait = (builds: readonly { pid: number }[]) =>
    log.info(`waiting for ${builds.length} running build(s) to finish with the cache (pid ${builds.map((build) => build.pid).join(', ')})`);
  const result = await withPruneLock(cache, flags.wait, () => pruneCache(cache, { olderThanMs: flags.olderThan, maxBytes: flags.maxSize }), onWait);
  if (flags.json) {
    printJson({ cache: cache.root, removed: result.removed.map(jsonEntry), temporaries: result.temporaries, remainingBytes: result.remainingBytes });
    return;
  }
  const now = Date.now();
  printLines([
    `removed ${result.removed.length} entries (${formatBytes(total(result.removed))}) and ${result.temporaries.length} stale temporaries; ${formatBytes(result.remainingBytes)} left in ${cache.root}`,
    ...(result.removed.length > 0 ? columns(entryRows(result.removed, now)) : []),
  ]);
}

export function cacheCommand(): Command {
  // Subcommands inherit these settings when created, so usage errors exit 2 like everywhere else.
  const command = new Command('cache')
    .description('list or prune the cache (~/.cache/rampack): blobs, layers, image parts, output records, kernels')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  command
    .command('ls')
    .description('list the cache entries with their size and last use, least recently used first')
    .option('--cache <dir>', 'cache directory (default: ~/.cache/rampack)')
    .option('--json', 'print the entries as JSON on stdout')
    .action(runList);
  command
    .command('prune')
    .description('remove stale temporaries and entries by last use; waits for running builds, never removes what they use')
    .option('--cache <dir>', 'cache directory (default: ~/.cache/rampack)')
    .option('--older-than <duration>', 'remove entries last used longer ago than this, e.g. 30d (units s, m, h, d, w)', parseDuration)
    .option('--max-size <size>', 'then remove the least recently used entries until the cache holds at most this, e.g. 20GiB', parseSize)
    .addOption(new Option('--wait <seconds>', 'how long to wait for running builds before giving up (exit 3, nothing removed)').argParser(parseSeconds).default(600_000, '600'))
    .option('--json', 'print what was removed as JSON on stdout')
    .addHelpText(
      'after',
      `
Without --older-than or --max-size, only stale temporaries and shards no image part names are removed.
Builds hold a lease on the cache while they run; prune waits until none does, and builds that start
meanwhile wait for it to finish (docs/cache.md).`,
    )
    .action(runPrune);
  return command;
}
