import { mkdtempSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { loadRecipe, recipeFiles, recipeTargets } from '../../src/recipe/recipe.ts';
import { testDirectory } from '../helpers/temp.ts';

const dir = testDirectory('recipe');
function recipeFile(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

const VALID = `language: go
image: docker.io/library/golang
versions:
  - version: "1.25"
    tag: 1.25-bookworm
  - version: "1.24"
    digest: sha256:${'a'.repeat(64)}
    default: true
agent: agent-bin/{arch}/agent
env: [GOFLAGS=-mod=mod]
`;

describe('recipes', () => {
  it('expands a recipe into language x version x arch targets', async () => {
    const file = recipeFile('go.yaml', VALID);
    const targets = recipeTargets(await loadRecipe(file), file);
    expect(targets.map((t) => [t.version, t.arch, t.isDefault, t.image])).toEqual([
      ['1.25', 'x86_64', false, 'docker.io/library/golang:1.25-bookworm'],
      ['1.25', 'aarch64', false, 'docker.io/library/golang:1.25-bookworm'],
      ['1.24', 'x86_64', true, `docker.io/library/golang:1.24@sha256:${'a'.repeat(64)}`],
      ['1.24', 'aarch64', true, `docker.io/library/golang:1.24@sha256:${'a'.repeat(64)}`],
    ]);
    expect(targets[1]!.agent).toBe(resolve('agent-bin/aarch64/agent'));
    expect(targets[0]).toMatchObject({ compression: 'gzip', env: ['GOFLAGS=-mod=mod'], origin: file });
  });

  it('makes the first version the default when none is marked', async () => {
    const file = recipeFile('first.yaml', 'language: x\nimage: oci:/tmp/x\nversions: [{version: "1"}, {version: "2"}]\narches: [x86_64]\n');
    expect(recipeTargets(await loadRecipe(file), file).map((t) => t.isDefault)).toEqual([true, false]);
  });

  it.each([
    ['unknown field', VALID.replace('tag: 1.25', 'tagg: 1.25'), 'versions[0]: unknown field "tagg"'],
    ['missing field', 'language: go\nversions: [{version: "1"}]\n', '(top level): missing required field "image"'],
    ['bad enum', `${VALID}compression: lz4\n`, 'compression: must be one of "gzip", "zstd"'],
    ['bad arch', `${VALID}arches: [x86]\n`, 'arches[0]: must be one of "x86_64", "aarch64"'],
    ['bad digest', VALID.replace(`sha256:${'a'.repeat(64)}`, 'sha256:xyz'), 'versions[1].digest: must match pattern'],
    ['two defaults', VALID.replace('tag: 1.25-bookworm', 'default: true'), 'more than one version has default: true'],
    ['duplicate version', VALID.replace('"1.24"', '"1.25"'), 'versions[1].version: "1.25" is listed twice'],
    ['agent without {arch}', VALID.replace('agent-bin/{arch}/agent', 'agent-bin/agent'), 'agent: one path for several arches'],
    ['YAML syntax', 'language: [go\n', 'invalid YAML'],
    ['version as number', VALID.replace('"1.25"', '1.25'), 'versions[0].version: must be string'],
    ['file mode as a number', `${VALID}files: [{source: a, destination: /etc/a, mode: 755}]\n`, 'files[0].mode: must be string'],
    ['file owner by name', `${VALID}files: [{source: a, destination: /etc/a, owner: "root:root"}]\n`, 'files[0].owner: must match pattern'],
    ['relative destination', `${VALID}files: [{source: a, destination: etc/a}]\n`, 'files[0].destination: must match pattern'],
    ['destination with ..', `${VALID}files: [{source: a, destination: /etc/../a}]\n`, 'files[0].destination: "/etc/../a" must be a clean absolute path'],
    ['destination /init', `${VALID}files: [{source: a, destination: /init}]\n`, 'files[0].destination: /init is the agent'],
    ['drop pattern with ..', `${VALID}drop: [usr/../etc]\n`, 'drop[0]: must match pattern'],
    ['agent image without image', VALID.replace('agent: agent-bin/{arch}/agent', 'agent: {path: /agent}'), 'agent: missing required field "image"'],
    ['agent image with a relative path', VALID.replace('agent: agent-bin/{arch}/agent', 'agent: {image: r/a:1, path: agent}'), 'agent.path: must match pattern'],
  ])('rejects %s with the file and field named', async (_name, text, message) => {
    const file = recipeFile('bad.yaml', text);
    const error = await loadRecipe(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain(`recipe ${file}`);
    expect((error as Error).message).toContain(message);
  });

  it('expands directories to their yaml files, sorted', async () => {
    const sub = mkdtempSync(join(dir, 'set-'));
    writeFileSync(join(sub, 'b.yaml'), VALID);
    writeFileSync(join(sub, 'a.yml'), VALID);
    writeFileSync(join(sub, 'notes.txt'), 'x');
    expect(await recipeFiles([sub])).toEqual([join(sub, 'a.yml'), join(sub, 'b.yaml')]);
    await expect(recipeFiles([join(dir, 'nope.yaml')])).rejects.toThrow('does not exist');
  });

  it('validates the recipes shipped in recipes/', async () => {
    for (const file of await recipeFiles(['recipes'])) {
      const targets = recipeTargets(await loadRecipe(file), file);
      // One default per arch, for the full image and for its slim variant.
      expect(targets.filter((t) => t.isDefault && !t.variant).length).toBe(2);
      expect(targets.filter((t) => t.isDefault && t.variant === 'slim').length).toBe(2);
    }
  });

  it('resolves extra files, drop patterns and agents per arch', async () => {
    const file = recipeFile('options.yaml', `language: py
image: docker.io/library/python
versions: [{version: "3.14"}]
agent:
  x86_64: bin/agent-amd64
  aarch64: {image: "ghcr.io/org/agent@sha256:${'b'.repeat(64)}"}
files:
  - {source: "conf/{arch}/pip.conf", destination: /etc/pip.conf}
  - {source: run.sh, destination: /usr/local/bin/run, mode: "0755", owner: "1000:100"}
drop: [usr/share/doc/**]
`);
    const [amd64, arm64] = recipeTargets(await loadRecipe(file), file);
    expect(amd64).toMatchObject({ agent: resolve('bin/agent-amd64'), drop: ['usr/share/doc/**'] });
    expect(amd64!.agentImage).toBeUndefined();
    expect(arm64!.agent).toBeUndefined();
    expect(arm64!.agentImage).toEqual({ reference: `ghcr.io/org/agent@sha256:${'b'.repeat(64)}`, path: '/agent' });
    expect(arm64!.files).toEqual([
      { source: resolve('conf/aarch64/pip.conf'), destination: '/etc/pip.conf', mode: 0o644, uid: 0, gid: 0 },
      { source: resolve('run.sh'), destination: '/usr/local/bin/run', mode: 0o755, uid: 1000, gid: 100 },
    ]);
  });

  it('takes one agent image for every arch', async () => {
    const file = recipeFile('agent-image.yaml', `${VALID.replace('agent: agent-bin/{arch}/agent', 'agent: {image: "r.example/agent:1", path: /usr/bin/agent}')}`);
    const targets = recipeTargets(await loadRecipe(file), file);
    expect(new Set(targets.map((t) => JSON.stringify(t.agentImage)))).toEqual(new Set([JSON.stringify({ reference: 'r.example/agent:1', path: '/usr/bin/agent' })]));
  });
});
