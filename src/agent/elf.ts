/** Just enough ELF parsing to check that an agent binary can be /init on an arch. */
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const ET_DYN = 3;
const PT_INTERP = 3;
const MACHINE_ARCH: Record<number, Arch> = { 62: 'x86_64', 183: 'aarch64' };
const MACHINE_NAMES: Record<number, string> = { 3: 'i386', 40: 'arm', 8: 'mips', 20: 'ppc', 21: 'ppc64', 22: 's390', 243: 'riscv' };

export interface ElfInfo {
  arch: Arch;
  /** The dynamic loader the binary asks for; undefined for a static binary. */
  interpreter?: string;
}

function machineName(machine: number): string {
  return MACHINE_ARCH[machine] ?? MACHINE_NAMES[machine] ?? `machine ${machine}`;
}

function readInterpreter(bytes: Buffer): string | undefined {
  const phoff = Number(bytes.readBigUInt64LE(32));
  const phentsize = bytes.readUInt16LE(54);
  const phnum = bytes.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > bytes.length) break;
    if (bytes.readUInt32LE(at) !== PT_INTERP) continue;
    const offset = Number(bytes.readBigUInt64LE(at + 8));
    const size = Number(bytes.readBigUInt64LE(at + 32));
    return bytes.subarray(offset, offset + size).toString('latin1').replace(/\0+$/, '');
  }
  return undefined;
}

/** Reads an agent binary's ELF header; `what` names it in errors (a file path). */
export function readElfInfo(bytes: Buffer, what: string): ElfInfo {
  if (bytes.length < 64 || !bytes.subarray(0, 4).equals(ELF_MAGIC)) {
    throw new InputError(`agent ${what} is not an ELF executable`, { hint: 'pass the compiled agent binary, not a script or archive' });
  }
  if (bytes[4] !== ELFCLASS64 || bytes[5] !== ELFDATA2LSB) {
    throw new InputError(`agent ${what} is not a 64-bit little-endian ELF binary`, { hint: 'build the agent for x86_64 or aarch64' });
  }
  const type = bytes.readUInt16LE(16);
  if (type !== ET_EXEC && type !== ET_DYN) {
    throw new InputError(`agent ${what} is an ELF object or core file, not an executable`);
  }
  const machine = bytes.readUInt16LE(18);
  const arch = MACHINE_ARCH[machine];
  if (!arch) throw new InputError(`agent ${what} is built for ${machineName(machine)}, which rampack does not target`);
  return { arch, interpreter: readInterpreter(bytes) };
}

/** Checks that the agent runs on `arch`; returns its ELF facts. */
export function checkAgentBinary(bytes: Buffer, arch: Arch, what: string): ElfInfo {
  const info = readElfInfo(bytes, what);
  if (info.arch !== arch) {
    throw new InputError(`agent ${what} is built for ${info.arch}, but the image is for ${arch}`, {
      hint: `give an ${arch} agent (recipes can use agent-bin/{arch}/agent)`,
    });
  }
  return info;
}
