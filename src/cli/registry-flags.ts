/**
 * The registry connection flags that every command talking to a registry
 * takes, the same way: credentials, extra CA certificates, and registries
 * reached without TLS verification.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { InputError } from '../errors.ts';
import { registryEnvironment } from '../registry/environment.ts';
import type { RegistryOptions } from '../registry/store.ts';

export interface RegistryFlags {
  username?: string;
  passwordStdin?: boolean;
  caFile?: string;
  insecureRegistry: string[];
}

export function addRegistryFlags(command: Command): Command {
  return command
    .option('--username <user>', 'registry user name')
    .option('--password-stdin', 'read the registry password from standard input')
    .option('--ca-file <pem>', 'extra CA certificates (PEM) to trust for registry TLS')
    .option('--insecure-registry <host>', 'skip TLS verification for this registry, and allow plain HTTP to it (repeatable)', (host: string, hosts: string[]) => [...hosts, host], []);
}

/** A password or token is short; standard input fed from /dev/zero must not fill memory. */
const PASSWORD_LIMIT = 64 * 1024;

export async function readPassword(): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of process.stdin) {
    length += (chunk as Buffer).length;
    if (length > PASSWORD_LIMIT) {
      throw new InputError(`--password-stdin: standard input holds more than ${PASSWORD_LIMIT} bytes, too many for a password`, { hint: 'pipe only the password or token' });
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** Connection options from the flags and the environment (RAMPACK_RETRY_BASE_MS, ...). */
export async function registryOptionsFrom(flags: RegistryFlags): Promise<Pick<RegistryOptions, 'username' | 'password' | 'caFile' | 'insecureRegistries' | 'retryBaseMs' | 'stallTimeoutMs'>> {
  return {
    username: flags.username,
    password: flags.passwordStdin ? await readPassword() : undefined,
    caFile: flags.caFile && resolve(flags.caFile),
    insecureRegistries: flags.insecureRegistry,
    ...registryEnvironment(),
  };
}
