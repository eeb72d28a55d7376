/** `rampack diff`: entries added, removed and changed between two initramfs files. */
import { Command } from 'commander';
import { diffInitramfs, type EntryDelta, type InitramfsDiff, type SideTotals } from '../inspect/diff.ts';
import { readInitramfs } from '../inspect/initramfs.ts';
import { formatBytes } from '../util/log.ts';
import { columns, printJson, printLines, signedBytes, signedCount } from './format.ts';

interface DiffFlags {
  json?: boolean;
}

function side(name: string, totals: SideTotals): string {
  return `${name} ${totals.file}: ${formatBytes(totals.size)}, ${formatBytes(totals.uncompressedSize)} uncompressed, ${totals.entries} entries`;
}

function section(title: string, marker: string, deltas: readonly EntryDelta[]): string[] {
  if (deltas.length === 0) return [];
  const rows = deltas.map((delta) => [
    `${marker} ${delta.path}`,
    delta.changed ? `${formatBytes(delta.sizeBefore)} -> ${formatBytes(delta.sizeAfter)}` : formatBytes(Math.max(delta.sizeBefore, delta.sizeAfter)),
    signedBytes(delta.sizeAfter - delta.sizeBefore),
    delta.changed?.join(',') ?? delta.type,
  ]);
  return ['', `${title} (${deltas.length}):`, ...columns(rows)];
}

function report(diff: InitramfsDiff): string[] {
  const { delta } = diff;
  return [
    side('A', diff.a),
    side('B', diff.b),
    ...section('added', '+', diff.added),
    ...section('removed', '-', diff.removed),
    ...section('changed', '~', diff.changed),
    '',
    `${diff.added.length} added, ${diff.removed.length} removed, ${diff.changed.length} changed, ${diff.unchanged} unchanged`,
    `entries ${signedCount(delta.entries)}, file data ${signedBytes(delta.fileBytes)}, ` +
      `uncompressed ${signedBytes(delta.uncompressedSize)}, compressed ${signedBytes(delta.size)}`,
  ];
}

async function runDiff(a: string, b: string, flags: DiffFlags): Promise<void> {
  const [before, after] = await Promise.all([readInitramfs(a), readInitramfs(b)]);
  const diff = diffInitramfs(before, after);
  if (flags.json) printJson(diff);
  else printLines(report(diff));
}

export function diffCommand(): Command {
  return new Command('diff')
    .description('compare two initramfs files: entries added, removed and changed, with size deltas')
    .argument('<a>', 'the old initramfs file')
    .argument('<b>', 'the new initramfs file')
    .option('--json', 'print the result as JSON on stdout')
    .addHelpText(
      'after',
      `
Entries are matched by path; a change is in type, content (sha256), mode, owner, symlink target or device
numbers. mtimes and inode numbers are ignored. Exits 0 whether or not the files differ.

Examples:
  rampack diff out-old/python-3.12-x86_64.cpio.gz out/python-3.12-x86_64.cpio.gz
  rampack diff a.cpio.zst b.cpio.zst --json | jq '.changed[] | select(.changed | index("content"))'`,
    )
    .action(runDiff);
}
