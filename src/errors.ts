/**
 * Typed errors. Every expected failure is a RampackError: the CLI prints its
 * message (and hint) on one line and exits with its exit code, no stack trace.
 */

/** Process exit codes, documented in docs/cli.md. */
export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  input: 3,
  registry: 4,
  verification: 5,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class RampackError extends Error {
  readonly exitCode: ExitCode;
  /** What the user can do about it. */
  readonly hint?: string;

  constructor(message: string, exitCode: ExitCode, options?: { hint?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.exitCode = exitCode;
    this.hint = options?.hint;
  }
}

/** The command line itself is wrong (unknown flag, missing argument). */
export class UsageError extends RampackError {
  constructor(message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, ExitCode.usage, options);
  }
}

/** A recipe, image, agent or other input is invalid. */
export class InputError extends RampackError {
  constructor(message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, ExitCode.input, options);
  }
}

/** A registry could not be reached or answered with an error. */
export class RegistryError extends RampackError {
  readonly status?: number;
  constructor(message: string, options?: { hint?: string; cause?: unknown; status?: number }) {
    super(message, ExitCode.registry, options);
    this.status = options?.status;
  }
}

/** Content did not match its digest, size or signature. */
export class VerificationError extends RampackError {
  constructor(message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, ExitCode.verification, options);
  }
}

/**
 * A blob read while it downloaded started over from byte 0 (the registry
 * could not resume it), so the bytes already read belong to a transfer that
 * was thrown away. Readers fall back to the complete file.
 */
export class DownloadRestartedError extends RampackError {
  constructor(message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, ExitCode.registry, options);
  }
}
