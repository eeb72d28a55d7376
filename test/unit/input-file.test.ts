import { execFileSync } from 'node:child_process';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { isMissingFile, readInputFile, readInputTextSync } from '../../src/util/input-file.ts';
import { testDirectory } from '../helpers/temp.ts';

const work = testDirectory('input-file');
const LIMIT = 1024 * 1024;

async function refusal(path: string): Promise<InputError> {
  const error = await readInputFile(path, 'agent', LIMIT).catch((caught: unknown) => caught);
  expect(error).toBeInstanceOf(InputError);
  return error as InputError;
}

describe('input files', () => {
  it('reads a regular file within the limit, whole', async () => {
    const path = join(work, 'small');
    writeFileSync(path, 'x'.repeat(LIMIT));
    expect((await readInputFile(path, 'agent', LIMIT)).length).toBe(LIMIT);
    expect(readInputTextSync(path, 'CA file', LIMIT)).toHaveLength(LIMIT);
  });

  it('refuses an endless device, a FIFO and a directory before reading, naming the file', async () => {
    const fifo = join(work, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const dir = join(work, 'dir');
    mkdirSync(dir);
    expect((await refusal('/dev/zero')).message).toBe('agent /dev/zero is a character device');
    expect((await refusal(fifo)).message).toBe(`agent ${fifo} is a FIFO`);
    expect((await refusal(dir)).message).toBe(`agent ${dir} is a directory`);
    expect(() => readInputTextSync(fifo, 'CA file', LIMIT)).toThrow(`CA file ${fifo} is a FIFO`);
  });

  it('refuses a file over the limit (a 10 GiB sparse file) without reading it, naming the limit', async () => {
    const sparse = join(work, 'sparse');
    writeFileSync(sparse, '');
    truncateSync(sparse, 10 * 1024 ** 3);
    const started = Date.now();
    const error = await refusal(sparse);
    expect(error.message).toBe(`agent ${sparse} is 10.0 GiB, over the size limit of 1.0 MiB`);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(() => readInputTextSync(sparse, 'CA file', LIMIT)).toThrow(`CA file ${sparse} is 10.0 GiB, over the size limit of 1.0 MiB`);
  });

  it('tells a missing file apart from other refusals', async () => {
    const missing = await refusal(join(work, 'missing'));
    expect(missing.message).toBe(`cannot read agent ${join(work, 'missing')}: ENOENT`);
    expect(isMissingFile(missing)).toBe(true);
    expect(isMissingFile(await refusal('/dev/zero'))).toBe(false);
  });
});
