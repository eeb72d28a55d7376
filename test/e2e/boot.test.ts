/**
 * Boots initramfs images built with GNU cpio (the oracle, independent of
 * rampack's writer) on Debian's stock kernel under QEMU, with the test agent
 * as /init, and checks what the agent sees inside the guest.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, copyFile, link, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import { bootInitramfs, type BootResult } from '../../src/boot/qemu.ts';
import type { Arch } from '../../src/oci/content.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { buildTestAgent, parseImageBlock, parseRunExits, parseTree, parseTrees, type AgentTreeEntry } from '../helpers/agent.ts';
import { ensureTools, TOOLS, type Tool } from '../helpers/system.ts';

const run = promisify(execFile);

const IMAGE_CONFIG = {
  env: ['PATH=/opt/tools/bin:/usr/bin', 'GREETING=hello "world"\tand \u00e9 \u{1f600}'],
  workingDir: '/srv',
  entrypoint: ['/opt/tools/bin/hello'],
  labels: { 'org.example': 'x', nested: [1, { a: null }] },
};
const HELLO = 'hello from rampack\n';
/** A name with a tab and a byte that is not UTF-8: the agent must escape both. */
const ODD_NAME = Buffer.from('data/odd\tname\xff', 'latin1');

interface ArchSetup {
  arch: Arch;
  tools: Tool[];
}

const ARCHES: ArchSetup[] = [
  { arch: 'x86_64', tools: [TOOLS.qemuX86] },
  { arch: 'aarch64', tools: [TOOLS.qemuArm] },
];

let work: string;

beforeAll(async () => {
  ensureTools(TOOLS.cpio, TOOLS.gzip, TOOLS.zstd);
  work = await mkdtemp(join(tmpdir(), 'rampack-boot-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** JSON with every non-ASCII character as a \u escape (surrogate pairs included), to exercise the agent's parser. */
function asciiJson(value: unknown): string {
  const escape = (char: string) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`;
  return JSON.stringify(value, null, 2).replace(/[\u0080-\uffff]/g, escape);
}

/** A small root filesystem: the agent as /init, a console, image.json, and one of each interesting entry. */
async function stageRootfs(root: string, agent: string): Promise<void> {
  for (const dir of ['dev', 'etc/rampack', 'proc', 'sys', 'srv', 'data', 'opt/tools/bin']) {
    await mkdir(join(root, dir), { recursive: true, mode: 0o755 });
  }
  await chmod(root, 0o755);
  await copyFile(agent, join(root, 'init'));
  await copyFile(agent, join(root, 'opt/tools/bin/hello'));
  await run('mknod', ['-m', '600', join(root, 'dev/console'), 'c', '5', '1']);
  await writeFile(join(root, 'etc/rampack/image.json'), asciiJson(IMAGE_CONFIG));
  await writeFile(join(root, 'data/hello.txt'), HELLO, { mode: 0o644 });
  await symlink('hello.txt', join(root, 'data/link'));
  await link(join(root, 'data/hello.txt'), join(root, 'data/hard'));
  await writeFile(join(root, 'data/suid'), '#!/bin/true\n');
  await chmod(join(root, 'data/suid'), 0o4755);
  await mkdir(join(root, 'data/sticky'));
  await chmod(join(root, 'data/sticky'), 0o1777);
  await run('mkfifo', ['-m', '640', join(root, 'data/fifo')]);
  await writeFile(Buffer.from(join(root, ODD_NAME.toString('latin1')), 'latin1'), 'odd');
}

/** The newc archive GNU cpio writes for `root`, parents before children, owned by root. */
async function gnuCpio(root: string, archive: string): Promise<void> {
  await run('sh', ['-c', 'find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > "$1"', 'sh', archive], { cwd: root });
}

async function compress(command: string, args: string[], input: string, output: string): Promise<void> {
  await run('sh', ['-c', `${command} ${args.join(' ')} < "$1" > "$2"`, 'sh', input, output]);
}

type ComparableEntry = Pick<AgentTreeEntry, 'path' | 'type' | 'mode' | 'uid' | 'gid' | 'detail'> & { size?: number; nlink?: number };

/** What the agent's tree line for an entry should say, from the staging directory (owners are 0: cpio -R 0:0). */
async function expectedEntry(root: string, relative: Buffer): Promise<ComparableEntry> {
  const onDisk = Buffer.concat([Buffer.from(root), relative]);
  const stats = await lstat(onDisk);
  const path = relative.length === 0 ? '/' : relative.toString('latin1');
  const common = { path, mode: stats.mode & 0o7777, uid: 0, gid: 0 };
  if (stats.isDirectory()) return { ...common, type: 'd', detail: '-' };
  if (stats.isSymbolicLink()) {
    const target = await readlink(onDisk, { encoding: 'buffer' });
    return { ...common, type: 'l', detail: target.toString('latin1'), size: target.length, nlink: 1 };
  }
  if (stats.isFile()) {
    const digest = createHash('sha256').update(await readFile(onDisk)).digest('hex');
    return { ...common, type: 'f', detail: digest, size: stats.size, nlink: stats.nlink };
  }
  if (stats.isCharacterDevice()) {
    return { ...common, type: 'c', detail: `${(stats.rdev >> 8) & 0xfff}:${stats.rdev & 0xff}`, size: 0, nlink: 1 };
  }
  if (stats.isFIFO()) return { ...common, type: 'p', detail: '-', size: 0, nlink: 1 };
  throw new Error(`unexpected entry type at ${onDisk.toString('latin1')}`);
}

/** Every entry under `root`, `root` itself first. */
async function expectedTree(root: string): Promise<ComparableEntry[]> {
  const entries: ComparableEntry[] = [];
  async function walk(relative: Buffer): Promise<void> {
    const entry = await expectedEntry(root, relative);
    entries.push(entry);
    if (entry.type !== 'd') return;
    for (const name of await readdir(Buffer.concat([Buffer.from(root), relative]), { encoding: 'buffer' })) {
      await walk(Buffer.concat([relative, Buffer.from('/'), name]));
    }
  }
  await walk(Buffer.alloc(0));
  return entries;
}

/**
 * What the guest's root holds: Debian's kernel has no built-in initramfs source, so it
 * unpacks its default archive first (/dev, /dev/console and /root, see usr/default_cpio_list),
 * then our archives; later entries win.
 */
async function expectedRootfs(root: string, ...appendedRoots: string[]): Promise<ComparableEntry[]> {
  const kernelDefaults: ComparableEntry[] = [
    { path: '/dev', type: 'd', mode: 0o755, uid: 0, gid: 0, detail: '-' },
    { path: '/dev/console', type: 'c', mode: 0o600, uid: 0, gid: 0, detail: '5:1', size: 0, nlink: 1 },
    { path: '/root', type: 'd', mode: 0o700, uid: 0, gid: 0, detail: '-' },
  ];
  const byPath = new Map(kernelDefaults.map((entry) => [entry.path, entry]));
  for (const entry of await expectedTree(root)) byPath.set(entry.path, entry);
  for (const appended of appendedRoots) {
    // Appended archives hold no "." entry: they do not touch the root directory.
    for (const entry of (await expectedTree(appended)).slice(1)) byPath.set(entry.path, entry);
  }
  return [...byPath.values()].sort((a, b) => Buffer.compare(Buffer.from(a.path, 'latin1'), Buffer.from(b.path, 'latin1')));
}

/** The agent's entries reduced to what the staging directory determines (tmpfs decides directory sizes and inodes). */
function comparable(entries: AgentTreeEntry[]): ComparableEntry[] {
  return entries.map(({ path, type, mode, uid, gid, detail, size, nlink }) =>
    type === 'd' ? { path, type, mode, uid, gid, detail } : { path, type, mode, uid, gid, detail, size, nlink },
  );
}

function agentLines(output: string): string[] {
  return output.split('\n').filter((line) => line.startsWith('RAMPACK-AGENT'));
}

/** Boots and fails with the whole console when the guest did not power off on its own. */
async function boot(arch: Arch, kernel: string, initrd: string, agentArgs: string[]): Promise<BootResult> {
  const result = await bootInitramfs({ arch, kernel, initrd, agentArgs, memoryMiB: 256, timeoutMs: 100_000 });
  expect(result.timedOut, `QEMU timed out; console:\n${result.output}\n${result.stderr}`).toBe(false);
  expect(result.exitCode, result.stderr).toBe(0);
  return result;
}

describe.each(ARCHES)('booting a GNU cpio initramfs on Debian $arch', ({ arch, tools }) => {
  let kernel: string;
  let root: string;
  let archive: string;

  beforeAll(async () => {
    ensureTools(...tools);
    kernel = await ensureDebianKernel(arch, KERNEL_CACHE);
    root = join(work, `${arch}-root`);
    await mkdir(root);
    await stageRootfs(root, await buildTestAgent(arch));
    archive = join(work, `${arch}.cpio`);
    await gnuCpio(root, archive);
  });

  it('runs the agent as /init and shows the unpacked tree, the image config and a program found through its PATH', async () => {
    const initrd = join(work, `${arch}.cpio.gz`);
    await compress('gzip', ['-9', '-n'], archive, initrd);
    const { output } = await boot(arch, kernel, initrd, [
      'image', ';;', 'tree', '/', ';;', 'echo', 'hello-console',
      ';;', 'run', 'hello', 'echo', 'from-path',
      ';;', 'run', 'hello', 'tree', '/proc/self/cwd',
      ';;', 'run', 'hello', 'tree', '/proc/self/environ',
    ]);

    expect(output).toMatch(/^RAMPACK-AGENT ready pid=1 uptime=\d+\.\d+$/m);
    expect(parseImageBlock(output)).toEqual(IMAGE_CONFIG);

    const tree = parseTree(output);
    expect(comparable(tree)).toEqual(await expectedRootfs(root));
    const byPath = new Map(tree.map((entry) => [entry.path, entry]));
    const hello = byPath.get('/data/hello.txt')!;
    expect(hello.detail).toBe(createHash('sha256').update(HELLO).digest('hex'));
    expect(byPath.get('/data/hard')).toMatchObject({ type: 'f', nlink: 2, inode: hello.inode, detail: hello.detail });
    expect(hello.nlink).toBe(2);
    expect(byPath.get('/data/link')).toMatchObject({ type: 'l', detail: 'hello.txt' });
    expect(byPath.get('/data/suid')).toMatchObject({ type: 'f', mode: 0o4755 });
    expect(byPath.get('/data/sticky')).toMatchObject({ type: 'd', mode: 0o1777 });
    expect(byPath.get('/dev/console')).toMatchObject({ type: 'c', mode: 0o600, detail: '5:1' });
    expect(byPath.get(`/${ODD_NAME.toString('latin1')}`)).toMatchObject({ type: 'f', size: 3 });
    expect(output).toContain('/data/odd\\x09name\\xff\tf\t');
    expect(byPath.has('/proc/self')).toBe(false); // nothing mounted before `tree`

    expect(output).toMatch(/^hello-console$/m);
    expect(output).toMatch(/^from-path$/m);
    expect(parseRunExits(output)).toEqual([0, 0, 0]);
    const [, cwd, environ] = parseTrees(output);
    expect(cwd).toEqual([expect.objectContaining({ path: '/proc/self/cwd', type: 'l', detail: IMAGE_CONFIG.workingDir })]);
    const expectedEnviron = Buffer.from(IMAGE_CONFIG.env.map((variable) => `${variable}\0`).join(''), 'utf8');
    expect(environ).toEqual([expect.objectContaining({ type: 'f', detail: createHash('sha256').update(expectedEnviron).digest('hex') })]);

    // The program is the agent itself, not pid 1: its own ready/done lines come between pid 1's.
    const lines = agentLines(output);
    expect(lines[0]).toMatch(/^RAMPACK-AGENT ready pid=1 /);
    expect(lines.slice(1, -1)).toHaveLength(6);
    expect(lines.at(-1)).toBe('RAMPACK-AGENT done');
  });
});

describe('initramfs encodings the x86_64 kernel accepts', () => {
  let kernel: string;
  let root: string;
  let archive: string;
  let gzipped: string;

  beforeAll(async () => {
    ensureTools(TOOLS.qemuX86);
    kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
    root = join(work, 'encodings-root');
    await mkdir(root);
    await stageRootfs(root, await buildTestAgent('x86_64'));
    archive = join(work, 'encodings.cpio');
    await gnuCpio(root, archive);
    gzipped = join(work, 'encodings.cpio.gz');
    await compress('gzip', ['-n'], archive, gzipped);
  });

  it('boots a zstd-compressed archive', async () => {
    const initrd = join(work, 'encodings.cpio.zst');
    await compress('zstd', ['-q', '-19', '-c'], archive, initrd);
    const { output } = await boot('x86_64', kernel, initrd, ['tree', '/']);
    expect(comparable(parseTree(output))).toEqual(await expectedRootfs(root));
    expect(agentLines(output).at(-1)).toBe('RAMPACK-AGENT done');
  });

  it('boots a gzip archive followed by an uncompressed one, padded to 4 bytes', async () => {
    const extraRoot = join(work, 'extra-root');
    await mkdir(join(extraRoot, 'extra'), { recursive: true, mode: 0o755 });
    await writeFile(join(extraRoot, 'extra/added.txt'), 'from the second archive\n');
    const extraArchive = join(work, 'extra.cpio');
    await run('sh', ['-c', 'printf "extra\\nextra/added.txt\\n" | cpio --quiet -o -H newc -R 0:0 > "$1"', 'sh', extraArchive], { cwd: extraRoot });

    const first = await readFile(gzipped);
    const padding = Buffer.alloc((4 - (first.length % 4)) % 4);
    const initrd = join(work, 'concatenated.img');
    await writeFile(initrd, Buffer.concat([first, padding, await readFile(extraArchive)]));

    const { output } = await boot('x86_64', kernel, initrd, ['tree', '/']);
    expect(comparable(parseTree(output))).toEqual(await expectedRootfs(root, extraRoot));
  });

  it('powers off with an error when a command fails', async () => {
    const { output } = await boot('x86_64', kernel, gzipped, ['run', 'no-such-program', ';;', 'echo', 'not-reached']);
    expect(agentLines(output).at(-1)).toBe('RAMPACK-AGENT error: run: no-such-program not found in PATH=/opt/tools/bin:/usr/bin');
    expect(output).not.toContain('not-reached');
  });

  it('kills QEMU when the timeout expires', async () => {
    const result = await bootInitramfs({ arch: 'x86_64', kernel, initrd: gzipped, agentArgs: ['echo', 'slow'], timeoutMs: 300 });
    expect(result).toMatchObject({ timedOut: true, exitCode: null });
    expect(result.output).not.toContain('RAMPACK-AGENT done');
  });

  it('refuses agent arguments that the kernel command line cannot carry', async () => {
    await expect(bootInitramfs({ arch: 'x86_64', kernel, initrd: archive, agentArgs: ['echo', 'two words'] })).rejects.toThrow(
      /cannot pass through the kernel command line/,
    );
  });
});
