/** Output and flag helpers shared by the commands: JSON on stdout, aligned columns, signed sizes, number flags. */
import { UsageError } from '../errors.ts';
import { formatBytes } from '../util/log.ts';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLines(lines: readonly string[]): void {
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Rows with each column padded to its widest cell (the last column is not padded). */
export function columns(rows: readonly (readonly string[])[], indent = '  '): string[] {
  // A loop, not Math.max(...cells): a spread of a few hundred thousand rows overflows the stack.
  const widths = rows[0]?.map((_, column) => rows.reduce((widest, row) => Math.max(widest, row[column]!.length), 0)) ?? [];
  return rows.map((row) => indent + row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  '));
}

/** +1.5 KiB / -300 B / ±0 B */
export function signedBytes(bytes: number): string {
  if (bytes === 0) return '±0 B';
  return `${bytes > 0 ? '+' : '-'}${formatBytes(Math.abs(bytes))}`;
}

export function signedCount(count: number): string {
  return count > 0 ? `+${count}` : count === 0 ? '±0' : String(count);
}

/** A commander argument parser for a flag that takes a positive whole number. */
export function positiveNumber(flag: string): (text: string) => number {
  return (text) => {
    if (!/^[1-9]\d*$/.test(text)) throw new UsageError(`${flag} must be a positive whole number, not "${text}"`);
    return Number(text);
  };
}
