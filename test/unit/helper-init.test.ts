/**
 * The host side of the helper inits (src/boot/probe.ts): the cache key of a
 * compiled helper init covers the header the programs share, and the plan
 * files hold what native/guest/guest.h reads.
 */
import { appendFile, cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helperInitKey, helperPlanFiles } from '../../src/boot/probe.ts';
import { InputError } from '../../src/errors.ts';
import { REPO_ROOT } from '../helpers/cli.ts';

let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'rampack-helper-init-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('the cache key of a compiled helper init', () => {
  it('changes for both programs when the header they share changes, and only then', async () => {
    const sources = join(work, 'guest');
    await cp(join(REPO_ROOT, 'native', 'guest'), sources, { recursive: true });
    const keys = async () => Promise.all(['probe.c', 'tracer.c'].map((name) => helperInitKey(sources, name, 'x86_64')));
    const before = await keys();
    expect(new Set(before).size).toBe(2);
    expect(await keys()).toEqual(before);
    expect(await helperInitKey(sources, 'probe.c', 'aarch64')).not.toBe(before[0]);

    await appendFile(join(sources, 'guest.h'), '/* an edit */\n');
    const after = await keys();
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
  });
});

describe('the plan of a helper init', () => {
  const plan = { commands: [['sh', '-c', 'echo "a b"'], ['true']], env: ['PATH=/bin', 'A= x'], workingDir: '/srv', user: 'app:staff' };

  it('holds the commands (count, then arguments), the image settings and the program\'s own files, as NUL-terminated strings', () => {
    const files = Object.fromEntries(helperPlanFiles(plan, { mode: 'trace' }).map((file) => [file.name, file.data.toString('utf8')]));
    expect(files).toEqual({
      commands: ['3', 'sh', '-c', 'echo "a b"', '1', 'true'].map((text) => `${text}\0`).join(''),
      env: 'PATH=/bin\0A= x\0',
      cwd: '/srv\0',
      user: 'app:staff\0',
      mode: 'trace\0',
    });
  });

  it('refuses a NUL byte anywhere, which the guest would read as the end of a string', () => {
    expect(() => helperPlanFiles({ ...plan, env: ['A=x\0y'] }, {})).toThrow(InputError);
    expect(() => helperPlanFiles({ ...plan, commands: [['echo', 'a\0b']] }, {})).toThrow(/cannot carry a NUL byte/);
  });
});
