/**
 * Freshness of a signed manifest (docs/manifest.md, "Freshness and
 * rollback"): `expires` bounds how long a captured manifest can be replayed,
 * `serial` lets a runtime refuse one older than what it already accepted.
 * Both sit inside the signed bytes. The runtime's memory of what it accepted
 * is a small JSON state file, updated atomically only after a manifest passed
 * every check.
 */
import { InputError, UsageError, VerificationError } from '../errors.ts';
import { INPUT_FILE_LIMITS, isMissingFile, readInputText } from '../util/input-file.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import type { Logger } from '../util/log.ts';
import type { Freshness, Manifest } from './manifest.ts';

/** How long `manifest sign` and `publish` make a signed manifest valid when not told. */
export const DEFAULT_VALIDITY = '30d';

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
const DURATION = /^(\d{1,6})([smhdw])$/;
/** RFC 3339 with a zone (Z or ±hh:mm); what rampack writes is always UTC, whole seconds. */
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** A duration such as 90s, 45m, 12h, 30d or 2w, in milliseconds; undefined when `text` is not one. */
function durationMs(text: string): number | undefined {
  const match = DURATION.exec(text);
  return match ? Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS] : undefined;
}

/** RFC 3339 UTC with whole seconds, the form manifests carry: 2027-01-03T00:00:00Z. */
export function formatTimestamp(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

/** Parses an RFC 3339 time; undefined when it is not one. */
export function parseTimestamp(text: string): Date | undefined {
  if (!TIMESTAMP.test(text)) return undefined;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/**
 * The `expires` value for `--expires TEXT`: a duration from `now` (30d, 12h)
 * or an absolute RFC 3339 time. A time already past is allowed (to make a
 * manifest readers must refuse, e.g. for a test); the commands warn about it.
 */
export function expiryFrom(text: string, now: Date, flag = '--expires'): string {
  const duration = durationMs(text);
  const date = duration !== undefined ? new Date(now.getTime() + duration) : parseTimestamp(text);
  if (!date) {
    throw new UsageError(`${flag} ${JSON.stringify(text)} is neither a duration nor an RFC 3339 time`, {
      hint: 'give a duration like 12h, 30d or 2w, or a time like 2027-01-03T00:00:00Z',
    });
  }
  return formatTimestamp(date);
}

/** Warns when what was just signed has already expired: every reader will refuse it. */
export function warnIfExpired(log: Logger, what: string, expires: string | undefined, now = new Date()): void {
  if (expires !== undefined && Date.parse(expires) <= now.getTime()) {
    log.warn(`${what} expired at ${expires}, before it was written: readers refuse it; sign again with a later --expires`);
  }
}

/** A `--clock-skew` value in milliseconds. */
export function clockSkewMs(text: string): number {
  const skew = durationMs(text);
  if (skew === undefined) throw new UsageError(`--clock-skew ${JSON.stringify(text)} is not a duration`, { hint: 'give e.g. 0s, 90s or 5m' });
  return skew;
}

/**
 * The serial of newly signed content: one above every serial it must follow
 * (the manifest's own, what a destination already serves), so a signing never
 * reuses or lowers one.
 */
function nextSerial(...previous: Array<number | undefined>): number {
  const highest = Math.max(0, ...previous.filter((serial): serial is number => serial !== undefined));
  if (highest >= Number.MAX_SAFE_INTEGER) throw new InputError(`serial ${highest} cannot be raised further`, { hint: 'publish to a new location' });
  return highest + 1;
}

/**
 * The serial and expiry of content being signed or published: the serial goes
 * one above every serial it follows (`manifest sign`: the manifest's own;
 * `publish`: that and the serial the destination serves now), so a runtime
 * never sees a lower or reused serial for newer content; a signed manifest
 * always expires (`--expires`, else DEFAULT_VALIDITY from now), an unsigned
 * one only when asked.
 */
export function nextFreshness(previousSerials: Array<number | undefined>, options: { expires?: string; signed: boolean; now: Date }): Freshness {
  const serial = nextSerial(...previousSerials);
  const expires = options.expires ?? (options.signed ? DEFAULT_VALIDITY : undefined);
  return { serial, expires: expires === undefined ? undefined : expiryFrom(expires, options.now) };
}

/**
 * The serial of a manifest a destination already serves, read leniently
 * (any schemaVersion: only the number matters); undefined when it has none.
 */
export function servedSerial(text: string, what: string): number | undefined {
  let document: { serial?: unknown } | null;
  try {
    document = JSON.parse(text) as { serial?: unknown } | null;
  } catch {
    throw new InputError(`${what} is not valid JSON, so its serial is unknown`, { hint: 'restore or remove it' });
  }
  const serial = document?.serial;
  return typeof serial === 'number' && Number.isSafeInteger(serial) && serial >= 1 ? serial : undefined;
}

/** The serial of the manifest file at `path` (any schemaVersion), undefined when there is none: what newer content must go above. */
export async function servedSerialOf(path: string): Promise<number | undefined> {
  const text = await readInputText(path, 'manifest', INPUT_FILE_LIMITS.manifest).catch((error: unknown) => {
    if (isMissingFile(error)) return undefined;
    throw error;
  });
  return text === undefined ? undefined : servedSerial(text, `manifest ${path}`);
}

export interface FreshnessPolicy {
  /** Signed manifests must carry `serial` and `expires`. */
  signed: boolean;
  now: Date;
  /** How far the reader's clock may lag behind the signer's: an expiry this recent still passes. */
  clockSkewMs: number;
  /** The lowest serial to accept (the last one accepted). */
  minSerial?: number;
  /** What the state file remembers, to tell a replay of an equal serial from a re-read. */
  accepted?: AcceptedState;
  /** A state file will record this manifest's serial, so it must have one. */
  recordsSerial?: boolean;
}

function describeAge(ms: number): string {
  const hours = ms / UNIT_MS.h;
  return hours >= 48 ? `${Math.floor(hours / 24)} days` : hours >= 1 ? `${Math.floor(hours)} hours` : `${Math.max(1, Math.round(ms / UNIT_MS.m))} minutes`;
}

function checkExpiry(manifest: Manifest, what: string, policy: FreshnessPolicy): void {
  if (manifest.expires === undefined) {
    if (!policy.signed) return;
    throw new VerificationError(`${what} has no expires: a signed manifest must say until when it is valid`, {
      hint: 'sign it again with `rampack manifest sign --expires 30d` (or publish it again)',
    });
  }
  const expires = parseTimestamp(manifest.expires);
  if (!expires) throw new VerificationError(`${what} has an expires that is not an RFC 3339 time: ${manifest.expires}`);
  const late = policy.now.getTime() - expires.getTime();
  if (late > policy.clockSkewMs) {
    throw new VerificationError(`${what} expired at ${manifest.expires} (${describeAge(late)} ago, now is ${formatTimestamp(policy.now)})`, {
      hint: 'fetch a fresh manifest; the publisher must re-sign (`rampack manifest sign --expires` or `rampack publish`) before expiry',
    });
  }
}

function checkSerial(manifest: Manifest, sha256: string, what: string, policy: FreshnessPolicy): void {
  const floor = Math.max(policy.minSerial ?? 0, policy.accepted?.serial ?? 0);
  if (manifest.serial === undefined) {
    if (!policy.signed && !policy.recordsSerial && floor === 0) return;
    throw new VerificationError(`${what} has no serial, so it cannot be told apart from an older one`, {
      hint: 'sign it again with `rampack manifest sign` (or publish it again)',
    });
  }
  if (manifest.serial < floor) {
    throw new VerificationError(`${what} has serial ${manifest.serial}, lower than ${floor}, the last one accepted: a rollback to an older manifest`, {
      hint: 'fetch the current manifest; a replayed older one is refused',
    });
  }
  const accepted = policy.accepted;
  if (accepted?.sha256 !== undefined && manifest.serial === accepted.serial && sha256 !== accepted.sha256) {
    throw new VerificationError(`${what} has serial ${manifest.serial} like the manifest accepted before, but other bytes (sha256 ${sha256}, accepted ${accepted.sha256})`, {
      hint: 'two different manifests were signed with one serial: re-sign the current one (that raises its serial) and fetch it again',
    });
  }
}

/** Refuses an expired manifest, one without the fields a signed manifest needs, and a rollback. */
export function checkFreshness(manifest: Manifest, sha256: string, what: string, policy: FreshnessPolicy): void {
  checkExpiry(manifest, what, policy);
  checkSerial(manifest, sha256, what, policy);
}

/** The runtime's record of the last manifest it accepted: `--state FILE`. */
export interface AcceptedState {
  serial: number;
  /** Hex sha256 of the accepted manifest's bytes (rampack always writes it; a hand-written state may leave it out). */
  sha256?: string;
  expires?: string;
  acceptedAt?: string;
}

function isAcceptedState(value: unknown): value is AcceptedState {
  const state = value as Partial<AcceptedState> | null;
  return Number.isSafeInteger(state?.serial) && state!.serial! >= 0 && (state!.sha256 === undefined || /^[a-f0-9]{64}$/.test(String(state!.sha256)));
}

/** Reads the state file; a missing one means nothing was accepted yet (the first manifest is trusted on its signature alone). */
export async function readAcceptedState(path: string): Promise<AcceptedState | undefined> {
  let text: string;
  try {
    text = await readInputText(path, 'state file', INPUT_FILE_LIMITS.state);
  } catch (error) {
    if (isMissingFile(error)) return undefined;
    throw error;
  }
  let state: unknown;
  try {
    state = JSON.parse(text);
  } catch {
    state = undefined;
  }
  if (!isAcceptedState(state)) {
    throw new InputError(`state file ${path} is not a rampack state file ({"serial": N, "sha256": "<hex of the manifest bytes>"})`, {
      hint: 'restore it; removing it makes the next manifest accepted at any serial',
    });
  }
  return state;
}

/** Records the accepted manifest, atomically: a crash leaves the old state or the new one. */
export async function writeAcceptedState(path: string, state: AcceptedState): Promise<void> {
  await writeFileAtomically(path, `${JSON.stringify(state, null, 2)}\n`);
}
