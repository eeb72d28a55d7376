/**
 * Files with holes, and tars of them written by GNU tar and bsdtar in every
 * sparse format they know: the real archives rampack must read.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { generatedContent } from './generated-layers.ts';

/** A sparse file: its size and the data written at some offsets; every other byte is a hole. */
export interface SparseFileSpec {
  name: string;
  size: number;
  runs: { offset: number; length: number }[];
}

const KIB = 1024;
const MIB = 1024 * KIB;

/**
 * Files whose maps cover the cases: more runs than an old GNU header and one
 * 512-byte 1.0 map block hold, all holes, data at both ends, a run that is
 * not block-aligned.
 */
export const SPARSE_FILES: SparseFileSpec[] = [
  { name: 'many-runs', size: 3 * MIB, runs: Array.from({ length: 40 }, (_, index) => ({ offset: index * 64 * KIB + 8 * KIB, length: 4 * KIB })) },
  { name: 'all-hole', size: MIB + 7, runs: [] },
  { name: 'ends', size: 2 * MIB, runs: [{ offset: 0, length: 5 * KIB }, { offset: 2 * MIB - 100, length: 100 }] },
  { name: 'middle', size: 700 * KIB + 3, runs: [{ offset: 300 * KIB, length: 12 * KIB + 1 }] },
];

/** The contents a spec describes, holes as zeros (small files only: it is all in memory). */
export function sparseContents(spec: SparseFileSpec): Buffer {
  const contents = Buffer.alloc(spec.size);
  spec.runs.forEach(({ offset, length }, index) => generatedContent(index + 1, length).copy(contents, offset));
  return contents;
}

/** Writes the file with real holes: only the runs are written, the size is set by truncation. */
export function writeSparseFile(path: string, spec: SparseFileSpec): void {
  const descriptor = openSync(path, 'w');
  try {
    spec.runs.forEach(({ offset, length }, index) => writeSync(descriptor, generatedContent(index + 1, length), 0, length, offset));
    ftruncateSync(descriptor, spec.size);
  } finally {
    closeSync(descriptor);
  }
}

/** The sparse formats of the peers, as the arguments that write them. */
export const SPARSE_FORMATS: Record<string, { command: 'tar' | 'bsdtar'; args: string[] }> = {
  'gnu-old': { command: 'tar', args: ['--format=gnu', '--sparse'] },
  'pax-0.0': { command: 'tar', args: ['--format=posix', '--sparse', '--sparse-version=0.0'] },
  'pax-0.1': { command: 'tar', args: ['--format=posix', '--sparse', '--sparse-version=0.1'] },
  'pax-1.0': { command: 'tar', args: ['--format=posix', '--sparse', '--sparse-version=1.0'] },
  bsdtar: { command: 'bsdtar', args: ['--format=pax', '--read-sparse'] },
};

/** A tar of directory `format` holding SPARSE_FILES, written by that format's tool (files are made under `work`). */
export function sparseTar(work: string, format: string): Buffer {
  const { command, args } = SPARSE_FORMATS[format]!;
  const directory = join(work, format);
  mkdirSync(directory, { recursive: true });
  for (const spec of SPARSE_FILES) writeSparseFile(join(directory, spec.name), spec);
  const owner = command === 'tar' ? ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@1700000000'] : ['--uid', '0', '--gid', '0'];
  return execFileSync(command, [...args, ...owner, '-C', work, '-cf', '-', format], { maxBuffer: 1 << 30 });
}
