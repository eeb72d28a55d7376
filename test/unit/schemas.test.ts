import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/cli.ts';

// rampack loads these without checking them against the meta-schema (src/util/json-schema.ts): this is that check.
describe('published JSON Schemas', () => {
  const folder = join(REPO_ROOT, 'schemas');
  const names = readdirSync(folder).filter((name) => name.endsWith('.json'));

  it('are all found', () => {
    expect(names).toEqual(expect.arrayContaining(['manifest.schema.json', 'recipe.schema.json']));
  });

  for (const name of names) {
    it(`${name} is a valid JSON Schema that compiles in strict mode`, () => {
      const ajv = new Ajv({ allErrors: true, strict: true });
      const schema = JSON.parse(readFileSync(join(folder, name), 'utf8')) as object;
      expect(ajv.validateSchema(schema), JSON.stringify(ajv.errors)).toBe(true);
      expect(() => ajv.compile(schema)).not.toThrow();
    });
  }
});
