#!/usr/bin/env node
/** rampack's command line: parses arguments, runs a command, maps errors to exit codes. */
import { Command, CommanderError } from 'commander';
import { ExitCode, RampackError } from '../errors.ts';
import { closeTransports } from '../registry/transport.ts';
import { TOOL_VERSION } from '../version.ts';
import { terminalLine } from '../util/log.ts';

/** Usage errors throw (so they map to exit code 2) instead of exiting inside commander. */
function strict(command: Command): Command {
  return command.exitOverride().showHelpAfterError('(run with --help for usage)');
}

const EXIT_CODES_HELP = `
Exit codes: 0 ok, 1 internal error (a bug), 2 usage error, 3 input error (recipe, image, agent, file),
4 network or registry error, 5 verification failure (digest mismatch, failed boot check).

Examples:
  rampack build recipes/ --out out
  rampack inspect out/go-1.23-x86_64.cpio.gz
  rampack diff old/go-1.23-x86_64.cpio.gz out/go-1.23-x86_64.cpio.gz
  rampack verify --boot out/manifest.json --recipe recipes/go.yaml

Documentation: docs/cli.md; rampack COMMAND --help for each command.`;

/** --debug is accepted after the command name too (main() looks for it in argv). */
function acceptDebugEverywhere(cli: Command): Command {
  for (const command of cli.commands) command.option('--debug', 'show stack traces of errors');
  return cli;
}

/**
 * commander's own errors ("unknown option '...'") echo what was typed: they go
 * through the same formatter as rampack's, so a value cannot break or flood the line.
 */
function readableUsageErrors(command: Command): Command {
  // commander's suggestion ("(Did you mean build?)", names it knows) keeps its own line; the rest may hold what was typed.
  const readable = (message: string) => {
    const [, text, suggestion] = /^([\s\S]*?)(\n\(Did you mean [\w\s,.-]+\?\))?\n?$/.exec(message)!;
    return `${terminalLine(text!)}${suggestion ?? ''}`;
  };
  command.configureOutput({ outputError: (message, write) => write(`${readable(message)}\n`) });
  command.commands.forEach(readableUsageErrors);
  return command;
}

/**
 * Each command's module, loaded when that command runs: a build does not load
 * QEMU, tracing or publishing code (tens of milliseconds on every run). Help
 * and completion list them all. In the order `rampack --help` shows them.
 */
const COMMANDS: Readonly<Record<string, () => Promise<Command>>> = {
  build: async () => (await import('./build.ts')).buildCommand(),
  plan: async () => (await import('./plan.ts')).planCommand(),
  manifest: async () => (await import('./manifest.ts')).manifestCommand(),
  publish: async () => (await import('./publish.ts')).publishCommand(),
  keygen: async () => (await import('./keygen.ts')).keygenCommand(),
  cache: async () => (await import('./cache.ts')).cacheCommand(),
  inspect: async () => (await import('./inspect.ts')).inspectCommand(),
  diff: async () => (await import('./diff.ts')).diffCommand(),
  verify: async () => (await import('./verify.ts')).verifyCommand(),
  slim: async () => (await import('./slim.ts')).slimCommand(),
  completion: async () => (await import('./completion.ts')).completionCommand(),
};

/** The command a command line runs: its first word that is not an option (global options take no values). */
function commandNamed(argv: readonly string[]): string | undefined {
  const name = argv.find((arg) => !arg.startsWith('-'));
  return name !== undefined && name !== 'completion' && Object.hasOwn(COMMANDS, name) ? name : undefined;
}

async function program(argv: readonly string[]): Promise<Command> {
  const cli = strict(new Command('rampack'))
    .description('Turn OCI container images into compressed initramfs images for microVMs, with your agent as /init.')
    .version(TOOL_VERSION, '-V, --version', 'print rampack’s version')
    .enablePositionalOptions()
    .option('--debug', 'show stack traces of errors')
    .addHelpText('after', EXIT_CODES_HELP);
  const named = commandNamed(argv);
  const commands = await Promise.all((named === undefined ? Object.values(COMMANDS) : [COMMANDS[named]!]).map((load) => load()));
  for (const command of commands) cli.addCommand(strict(command));
  return readableUsageErrors(acceptDebugEverywhere(cli));
}

function report(error: unknown, debug: boolean): number {
  if (error instanceof CommanderError) {
    return error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
  }
  if (error instanceof RampackError) {
    process.stderr.write(`rampack: error: ${terminalLine(error.message)}\n`);
    if (error.hint) process.stderr.write(`rampack: hint: ${terminalLine(error.hint)}\n`);
    if (debug && error.stack) process.stderr.write(`${error.stack}\n`);
    return error.exitCode;
  }
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`rampack: internal error: ${terminalLine(message)}\n`);
  process.stderr.write(debug && error instanceof Error ? `${error.stack}\n` : 'rampack: run with --debug for a stack trace, and please report it\n');
  return ExitCode.internal;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await (await program(argv)).parseAsync(argv, { from: 'user' });
    return ExitCode.ok;
  } catch (error) {
    return report(error, argv.includes('--debug'));
  } finally {
    closeTransports();
  }
}

/**
 * When the reader of stdout or stderr goes away (`rampack inspect --help | head`), stop at once and
 * quietly, as Unix tools do: there is no one left to tell anything to.
 */
function exitQuietlyWhenReaderLeaves(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
      process.exit(typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok);
    });
  }
}

/** Runs the command line as the process: the launcher (bin/rampack.js) calls this. */
export async function run(argv: readonly string[]): Promise<void> {
  exitQuietlyWhenReaderLeaves();
  process.exitCode = await main(argv);
}

if (import.meta.main) await run(process.argv.slice(2));
