import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError, UsageError } from '../../src/errors.ts';
import { cellKey } from '../../src/pipeline/target.ts';
import { inputDigest, loadTargets, planCells, selectCell, withoutUntracedSlims } from '../../src/recipe/plan.ts';
import { testDirectory } from '../helpers/temp.ts';

const dir = testDirectory('plan');
const agent = join(dir, 'agent');
writeFileSync(agent, 'agent v1');
const extra = join(dir, 'extra.conf');
writeFileSync(extra, 'a=1');

function recipe(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

const GO = recipe('go.yaml', `language: go
image: docker.io/library/golang
versions: [{version: "1.27", tag: 1.27-trixie, default: true}, {version: "1.26", tag: 1.26-trixie}]
agent: ${agent}
arches: [x86_64, aarch64]
files: [{source: ${extra}, destination: /etc/extra.conf}]
`.replace(`agent: ${agent}`, `agent: {x86_64: ${agent}, aarch64: ${agent}}`));

describe('the build plan', () => {
  it('lists every cell with a stable key, in recipe order', async () => {
    const cells = await planCells(await loadTargets([GO]));
    expect(cells.map((c) => [c.key, c.default, c.image])).toEqual([
      ['go-1.27-x86_64', true, 'docker.io/library/golang:1.27-trixie'],
      ['go-1.27-aarch64', true, 'docker.io/library/golang:1.27-trixie'],
      ['go-1.26-x86_64', false, 'docker.io/library/golang:1.26-trixie'],
      ['go-1.26-aarch64', false, 'docker.io/library/golang:1.26-trixie'],
    ]);
    expect(cells[0]).toMatchObject({ language: 'go', version: '1.27', arch: 'x86_64', recipe: GO });
    expect(new Set(cells.map((c) => c.inputDigest)).size).toBe(4);
  });

  it('gives equal inputs equal digests, and changes when the agent or an extra file changes', async () => {
    const [target] = await loadTargets([GO]);
    const before = await inputDigest(target!);
    expect(await inputDigest({ ...target!, origin: 'elsewhere.yaml' })).toBe(before);
    writeFileSync(agent, 'agent v2');
    const withNewAgent = await inputDigest(target!);
    expect(withNewAgent).not.toBe(before);
    writeFileSync(extra, 'a=2');
    expect(await inputDigest(target!)).not.toBe(withNewAgent);
    expect(await inputDigest({ ...target!, env: ['A=1'] })).not.toBe(await inputDigest(target!));
  });

  it('needs the agent to exist, since its bytes are an input', async () => {
    const [target] = await loadTargets([GO]);
    await expect(inputDigest({ ...target!, agent: join(dir, 'missing') })).rejects.toThrow(InputError);
  });

  it('uses the reference of an agent image', async () => {
    const [target] = await loadTargets([GO]);
    const image = { ...target!, agent: undefined, agentImage: { reference: 'r/agent:1', path: '/agent' } };
    expect(await inputDigest(image)).not.toBe(await inputDigest({ ...image, agentImage: { reference: 'r/agent:2', path: '/agent' } }));
  });

  it('refuses two recipes building the same cell', async () => {
    const copy = recipe('go-copy.yaml', `language: go\nimage: golang\nversions: [{version: "1.27"}]\narches: [x86_64]\n`);
    await expect(loadTargets([GO, copy])).rejects.toThrow(`recipes ${GO} and ${copy} both build go-1.27-x86_64`);
  });

  it('selects one cell by key, and names the known keys otherwise', async () => {
    const targets = await loadTargets([GO]);
    expect(cellKey(selectCell(targets, 'go-1.26-aarch64'))).toBe('go-1.26-aarch64');
    const error = (() => { try { selectCell(targets, 'go-1.20-x86_64'); } catch (e) { return e; } })();
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).hint).toContain('go-1.27-x86_64, go-1.27-aarch64');
  });

  it('adds a slim variant cell once its trace exists, whose digest covers the trace', async () => {
    const slim = recipe('py.yaml', `language: python\nimage: python\nversions: [{version: "3.15"}]\narches: [x86_64]\nagent: ${agent}\nslim: {workload: [[python3, -c, "1"]], keep: [usr/lib/**], trace: "traces/{language}-{version}-{arch}.trace"}\n`);
    const targets = await loadTargets([slim]);
    expect(targets.map(cellKey)).toEqual(['python-3.15-x86_64', 'python-3.15-x86_64-slim']);
    const warnings: string[] = [];
    expect((await withoutUntracedSlims(targets, (message) => warnings.push(message))).map(cellKey)).toEqual(['python-3.15-x86_64']);
    expect(warnings[0]).toContain(`python-3.15-x86_64-slim: no trace ${join(dir, 'traces', 'python-3.15-x86_64.trace')}`);
    mkdirSync(join(dir, 'traces'));
    writeFileSync(join(dir, 'traces', 'python-3.15-x86_64.trace'), 'v1');
    const cells = await planCells(await withoutUntracedSlims(targets, () => {}));
    expect(cells.map((cell) => [cell.key, cell.variant])).toEqual([['python-3.15-x86_64', undefined], ['python-3.15-x86_64-slim', 'slim']]);
    writeFileSync(join(dir, 'traces', 'python-3.15-x86_64.trace'), 'v2');
    expect(await inputDigest(targets[1]!)).not.toBe(cells[1]!.inputDigest);
    expect(await inputDigest(targets[0]!)).toBe(cells[0]!.inputDigest);
  });
});
