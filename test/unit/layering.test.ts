/**
 * The import graph of src/ points only down the layers of docs/architecture.md:
 * a module imports from its own folder or from a folder of a lower layer,
 * never from the side or from above. A new folder must be placed here first.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/cli.ts';

/** Bottom first; the folders of one layer may not import each other. */
const LAYERS: readonly (readonly string[])[] = [
  ['errors.ts', 'version.ts'],
  ['util'],
  ['oci', 'tree'],
  ['tar', 'cpio', 'compress'],
  ['cache'],
  ['registry'],
  ['sources'],
  ['layers', 'agent', 'manifest', 'inspect'],
  ['boot', 'publish'],
  ['slim'],
  ['pipeline'],
  ['recipe'],
  ['cli'],
];

const SRC = join(REPO_ROOT, 'src');
const IMPORT = /^\s*(?:import|export)\b[^;]*?\bfrom\s+'(\.{1,2}\/[^']+)'/gm;

function sourceFiles(dir: string): string[] {
  const files: string[] = [];
  const pending = [dir];
  for (let current = pending.pop(); current !== undefined; current = pending.pop()) {
    for (const entry of readdirSync(current, { withFileTypes: true })) {
      const path = join(current, entry.name);
      if (entry.isDirectory()) pending.push(path);
      else if (entry.name.endsWith('.ts')) files.push(path);
    }
  }
  return files.sort();
}

/** The top-level folder (or file) of src/ that holds `file`. */
function unitOf(file: string): string {
  return relative(SRC, file).split('/')[0]!;
}

function layerOf(unit: string): number {
  const layer = LAYERS.findIndex((units) => units.includes(unit));
  if (layer < 0) throw new Error(`src/${unit} is in no layer: place it in LAYERS (test/unit/layering.test.ts) and docs/architecture.md`);
  return layer;
}

describe('the layers of src/', () => {
  it('place every folder of src/', () => {
    const units = new Set(sourceFiles(SRC).map(unitOf));
    for (const unit of units) expect(() => layerOf(unit)).not.toThrow();
  });

  it('only ever import downwards', () => {
    const upward: string[] = [];
    for (const file of sourceFiles(SRC)) {
      const from = unitOf(file);
      for (const match of readFileSync(file, 'utf8').matchAll(IMPORT)) {
        const to = unitOf(normalize(join(dirname(file), match[1]!)));
        if (to !== from && layerOf(to) >= layerOf(from)) upward.push(`${relative(SRC, file)} imports ${match[1]} (${from} -> ${to})`);
      }
    }
    expect(upward).toEqual([]);
  });
});
