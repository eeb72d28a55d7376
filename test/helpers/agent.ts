/**
 * The test agent (test/fixtures/agent.c): building it, and reading what it
 * prints on the console of a booted initramfs.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Arch } from '../../src/oci/content.ts';
import { writeAtomically } from '../../src/util/atomic.ts';
import { ensureTools, TOOLS, type Tool } from './system.ts';

const run = promisify(execFile);

export const AGENT_SOURCE = join(import.meta.dirname, '..', 'fixtures', 'agent.c');
/** An agent with a protocol of its own (it only waits): what a production runtime's agent looks like to rampack. */
export const SILENT_AGENT_SOURCE = join(import.meta.dirname, '..', 'fixtures', 'silent-agent.c');

const COMPILERS: Record<Arch, { tools: Tool[]; command: string }> = {
  x86_64: { tools: [TOOLS.musl], command: 'musl-gcc' },
  aarch64: { tools: [TOOLS.aarch64Gcc, TOOLS.aarch64Libc], command: 'aarch64-linux-gnu-gcc' },
};

/**
 * Compiles the agent (or another fixture: `sourcePath`) as a static binary
 * for `arch` and returns its path. The binary is cached under the source's
 * sha256, so edits rebuild it.
 */
export async function buildTestAgent(arch: Arch, sourcePath = AGENT_SOURCE): Promise<string> {
  const compiler = COMPILERS[arch];
  ensureTools(...compiler.tools);
  const source = await readFile(sourcePath);
  const key = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const binary = join(tmpdir(), 'rampack-test-agent', `${key}-${arch}`, 'agent');
  if (await exists(binary)) return binary;
  await writeAtomically(binary, async (temporary) => {
    try {
      await run(compiler.command, ['-static', '-O2', '-s', '-Wall', '-Werror', '-o', temporary, sourcePath]);
    } catch (error) {
      throw new Error(`${compiler.command} could not build ${sourcePath}: ${(error as { stderr?: string }).stderr ?? error}`);
    }
  });
  return binary;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

export type AgentEntryType = 'f' | 'd' | 'l' | 'c' | 'b' | 'p' | 's';

/** One line of the agent's `tree` output. */
export interface AgentTreeEntry {
  /** Absolute path as a byte string (latin1), escapes decoded. */
  path: string;
  type: AgentEntryType;
  /** Permission bits including setuid, setgid and sticky. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** sha256 hex of a file, target of a symlink (byte string), "major:minor" of a device, else "-". */
  detail: string;
  inode: number;
  nlink: number;
}

/** Undoes the agent's \xHH escapes, giving a byte string. */
function unescapeBytes(text: string): string {
  return text.replace(/\\x([0-9a-f]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

/** The lines of every block between a BEGIN and an END marker, in order. */
function blocks(output: string, name: string): string[][] {
  const found: string[][] = [];
  let current: string[] | undefined;
  for (const line of output.replace(/\r/g, '').split('\n')) {
    if (line === `RAMPACK-${name}-BEGIN`) current = [];
    else if (line === `RAMPACK-${name}-END` && current !== undefined) {
      found.push(current);
      current = undefined;
    } else current?.push(line);
  }
  return found;
}

function firstBlock(output: string, name: string): string[] {
  const [first] = blocks(output, name);
  if (first === undefined) throw new Error(`agent output has no complete RAMPACK-${name} block:\n${output}`);
  return first;
}

export function parseTreeLine(line: string): AgentTreeEntry {
  const fields = line.split('\t');
  if (fields.length !== 9) throw new Error(`agent tree line has ${fields.length} fields, expected 9: ${JSON.stringify(line)}`);
  const [path, type, mode, uid, gid, size, detail, inode, nlink] = fields as [string, ...string[]];
  if (!/^[fdlcbps]$/.test(type!)) throw new Error(`agent tree line has an unknown type: ${JSON.stringify(line)}`);
  return {
    path: unescapeBytes(path),
    type: type as AgentEntryType,
    mode: Number.parseInt(mode!, 8),
    uid: Number(uid),
    gid: Number(gid),
    size: Number(size),
    detail: type === 'l' ? unescapeBytes(detail!) : detail!,
    inode: Number(inode),
    nlink: Number(nlink),
  };
}

/** The first `tree` block of the agent's output, in the agent's (bytewise path) order. */
export function parseTree(output: string): AgentTreeEntry[] {
  return firstBlock(output, 'TREE').map(parseTreeLine);
}

/** Every `tree` block of the agent's output (one per `tree` command, including those of `run agent tree`). */
export function parseTrees(output: string): AgentTreeEntry[][] {
  return blocks(output, 'TREE').map((lines) => lines.map(parseTreeLine));
}

/** The parsed /etc/rampack/image.json the agent printed for `image`. */
export function parseImageBlock(output: string): unknown {
  return JSON.parse(firstBlock(output, 'IMAGE').join('\n'));
}

/** Exit statuses of the agent's `run` commands, in order. */
export function parseRunExits(output: string): number[] {
  return [...output.matchAll(/^RAMPACK-RUN exit=(\d+)$/gm)].map((match) => Number(match[1]));
}
