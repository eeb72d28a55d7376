import { describe, expect, it } from 'vitest';
import { columns } from '../../src/cli/format.ts';

describe('columns', () => {
  it('pads each column to its widest cell', () => {
    expect(columns([['a', 'bb', 'x'], ['ccc', 'd', 'y']])).toEqual(['  a    bb  x', '  ccc  d   y']);
  });

  it('lays out a listing of 500000 rows (a diff of two large trees) without overflowing the stack', () => {
    const rows = Array.from({ length: 500_000 }, (_, index) => [`/file-${index}`, `${index} B`]);
    const lines = columns(rows);
    expect(lines).toHaveLength(500_000);
    expect(lines[0]).toBe(`  /file-0${' '.repeat('/file-499999'.length - '/file-0'.length)}  0 B`);
  });
});
