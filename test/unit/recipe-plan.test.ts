import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError, UsageError } from '../../src/errors.ts';
import { cellKey, inputDigest, loadTargets, planCells, selectCell } from '../../src/recipe/plan.ts';
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
});
