/** Where stages report progress; the CLI decides how it is shown. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  debug(message: string): void;
}

export interface LoggerOptions {
  quiet?: boolean;
  verbose?: boolean;
}

/** A message stays this short on the terminal however long the values it echoes. */
export const TERMINAL_LINE_LIMIT = 1000;

/** C0 and C1 control characters, DEL, and the Unicode line and paragraph separators. */
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

const NAMED_ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * A message as one readable terminal line: control characters escaped (a newline in a
 * user's value cannot forge a log line, an escape sequence cannot move the cursor),
 * and the middle of an overlong message left out, keeping its start and end, which
 * say what failed and why.
 */
export function terminalLine(message: string): string {
  const escaped = message.replace(CONTROL_CHARACTERS, (character) => NAMED_ESCAPES[character] ?? `\\u${character.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (escaped.length <= TERMINAL_LINE_LIMIT) return escaped;
  const keep = (TERMINAL_LINE_LIMIT - 40) / 2;
  return `${escaped.slice(0, keep)}…(${escaped.length - 2 * keep} characters left out)…${escaped.slice(-keep)}`;
}

/** Plain timestamped lines on stderr: what CI logs want. */
export function lineLogger(options: LoggerOptions = {}): Logger {
  const write = (level: string, message: string) =>
    process.stderr.write(`${new Date().toISOString()} ${level} ${terminalLine(message)}\n`);
  return {
    info: (message) => options.quiet || write('info', message),
    warn: (message) => write('warn', message),
    debug: (message) => options.verbose && write('debug', message),
  };
}

export const silentLogger: Logger = { info: () => {}, warn: () => {}, debug: () => {} };

/**
 * The stages of one image's build, in order. The build reports them as typed
 * events through a BuildReporter and knows nothing of how they are shown
 * (a task view in a terminal, log lines in CI).
 */
export const BUILD_STAGES = ['resolve', 'pull', 'flatten', 'compress', 'write'] as const;
/** A build's stages, and `publish`, the one stage of `rampack publish`. */
export type BuildStage = (typeof BUILD_STAGES)[number] | 'publish';

/** How far a stage has got: bytes for pull and compress, entries for flatten. */
export interface StageProgress {
  done: number;
  /** Known up front for pull (the layers' sizes); absent otherwise. */
  total?: number;
  unit: 'bytes' | 'entries';
}

export interface BuildReporter {
  start(stage: BuildStage): void;
  /** Called often (per chunk): implementations throttle what they show. */
  progress(stage: BuildStage, progress: StageProgress): void;
  /** `summary` is a short phrase for humans, e.g. "3 layers, 1.2 MiB". */
  end(stage: BuildStage, summary: string): void;
}

export const silentReporter: BuildReporter = { start: () => {}, progress: () => {}, end: () => {} };

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** 1536 -> "1.5 KiB". */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

/** 1234 -> "1.2s". */
export function formatDuration(milliseconds: number): string {
  return milliseconds < 60_000 ? `${(milliseconds / 1000).toFixed(1)}s` : `${Math.floor(milliseconds / 60_000)}m${Math.round((milliseconds % 60_000) / 1000)}s`;
}
