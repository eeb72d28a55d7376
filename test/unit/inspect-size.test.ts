import { describe, expect, it } from 'vitest';
import { memoryBudgetWarning, parseByteSize, sizeByDirectory } from '../../src/inspect/size.ts';

describe('sizes', () => {
  it('parses memory budgets in binary units and names the setting when it cannot', () => {
    expect(parseByteSize('512MiB', 'x')).toBe(512 * 2 ** 20);
    expect(parseByteSize('1.5 GiB', 'x')).toBe(1.5 * 2 ** 30);
    expect(parseByteSize('100B', 'x')).toBe(100);
    expect(() => parseByteSize('512MB', 'recipe r.yaml: memoryBudget')).toThrow('recipe r.yaml: memoryBudget: "512MB" is not a size');
  });

  it('totals directories inclusively up to a depth, largest first, root files under /', () => {
    const files = [
      { path: 'usr/lib/a.so', size: 100 },
      { path: 'usr/lib/x/b.so', size: 50 },
      { path: 'usr/bin/c', size: 10 },
      { path: 'init', size: 30 },
    ];
    expect(sizeByDirectory(files, 1)).toEqual([
      { path: '/usr', bytes: 160, files: 3 },
      { path: '/', bytes: 30, files: 1 },
    ]);
    expect(sizeByDirectory(files, 2).map((dir) => [dir.path, dir.bytes])).toEqual([['/usr', 160], ['/usr/lib', 150], ['/', 30], ['/usr/bin', 10]]);
  });

  it('warns only when the published boot.minMemoryMiB exceeds the budget', () => {
    const check = { label: 'go 1.25 x86_64', budgetBytes: 512 * 2 ** 20, minMemoryMiB: 512, compressedBytes: 300, uncompressedBytes: 700, directories: [{ path: '/usr', bytes: 600, files: 2 }] };
    expect(memoryBudgetWarning(check)).toBeUndefined();
    expect(memoryBudgetWarning({ ...check, minMemoryMiB: 520 })).toBe(
      'go 1.25 x86_64: booting needs 520.0 MiB of RAM (boot.minMemoryMiB; 300 B compressed, 700 B unpacked), over the memory budget of 512.0 MiB; largest directories: /usr 600 B',
    );
  });
});
