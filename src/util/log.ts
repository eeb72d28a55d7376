/** Where stages report progress; the CLI decides how it is shown. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  debug(message: string): void;
}

/** Plain timestamped lines on stderr: what CI logs want. */
export function lineLogger(options: { quiet?: boolean; verbose?: boolean } = {}): Logger {
  const write = (level: string, message: string) =>
    process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`);
  return {
    info: (message) => options.quiet || write('info', message),
    warn: (message) => write('warn', message),
    debug: (message) => options.verbose && write('debug', message),
  };
}

export const silentLogger: Logger = { info: () => {}, warn: () => {}, debug: () => {} };
