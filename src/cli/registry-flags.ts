/**
 * The registry connection flags that every command talking to a registry
 * takes, the same way: credentials, extra CA certificates, and registries
 * reached without TLS verification.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
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

export async function readPassword(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
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
