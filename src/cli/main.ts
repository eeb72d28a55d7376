#!/usr/bin/env node
/** rampack's command line: parses arguments, runs a command, maps errors to exit codes. */
import { Command, CommanderError } from 'commander';
import { ExitCode, RampackError } from '../errors.ts';
import { closeTransports } from '../registry/transport.ts';
import { TOOL_VERSION } from '../version.ts';
import { terminalLine } from '../util/log.ts';
import { buildCommand } from './build.ts';
import { cacheCommand } from './cache.ts';
import { completionCommand } from './completion.ts';
import { diffCommand } from './diff.ts';
import { inspectCommand } from './inspect.ts';
import { verifyCommand } from './verify.ts';
import { keygenCommand } from './keygen.ts';
import { manifestCommand } from './manifest.ts';
import { planCommand } from './plan.ts';
import { publishCommand } from './publish.ts';
import { slimCommand } from './slim.ts';

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
  command.configureOutput({ outputError: (message, write) => write(`${terminalLine(message.replace(/\n$/, ''))}\n`) });
  command.commands.forEach(readableUsageErrors);
  return command;
}

function program(): Command {
  const cli = commands()
    .addCommand(strict(inspectCommand()))
    .addCommand(strict(diffCommand()))
    .addCommand(strict(verifyCommand()))
    .addCommand(strict(slimCommand()))
    .addCommand(strict(completionCommand()));
  return readableUsageErrors(acceptDebugEverywhere(cli));
}

function commands(): Command {
  return strict(new Command('rampack'))
    .description('Turn OCI container images into compressed initramfs images for microVMs, with your agent as /init.')
    .version(TOOL_VERSION, '-V, --version', 'print rampack’s version')
    .enablePositionalOptions()
    .option('--debug', 'show stack traces of errors')
    .addHelpText('after', EXIT_CODES_HELP)
    .addCommand(strict(buildCommand()))
    .addCommand(strict(planCommand()))
    .addCommand(strict(manifestCommand()))
    .addCommand(strict(publishCommand()))
    .addCommand(strict(keygenCommand()))
    .addCommand(strict(cacheCommand()));
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
  const cli = program();
  try {
    await cli.parseAsync(argv, { from: 'user' });
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
