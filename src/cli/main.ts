#!/usr/bin/env node
/** rampack's command line: parses arguments, runs a command, maps errors to exit codes. */
import { Command, CommanderError } from 'commander';
import { ExitCode, RampackError } from '../errors.ts';
import { TOOL_VERSION } from '../version.ts';
import { buildCommand } from './build.ts';

/** Usage errors throw (so they map to exit code 2) instead of exiting inside commander. */
function strict(command: Command): Command {
  return command.exitOverride().showHelpAfterError('(run with --help for usage)');
}

function program(): Command {
  return strict(new Command('rampack'))
    .description('Turn OCI container images into compressed initramfs images for microVMs, with your agent as /init.')
    .version(TOOL_VERSION, '-V, --version', 'print rampack’s version')
    .enablePositionalOptions()
    .option('--debug', 'show stack traces of errors')
    .addCommand(strict(buildCommand()));
}

function report(error: unknown, debug: boolean): number {
  if (error instanceof CommanderError) {
    return error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
  }
  if (error instanceof RampackError) {
    process.stderr.write(`rampack: error: ${error.message}\n`);
    if (error.hint) process.stderr.write(`rampack: hint: ${error.hint}\n`);
    if (debug && error.stack) process.stderr.write(`${error.stack}\n`);
    return error.exitCode;
  }
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`rampack: internal error: ${message}\n`);
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
  }
}

process.exitCode = await main(process.argv.slice(2));
