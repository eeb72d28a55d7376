/**
 * Validation against rampack's published JSON Schemas (schemas/*.json), with
 * problems phrased as "field: what is wrong" so messages can name the file,
 * the field and the problem.
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

const validators = new Map<string, Promise<ValidateFunction>>();

async function compile(schemaName: string): Promise<ValidateFunction> {
  const schema = JSON.parse(await readFile(new URL(`../../schemas/${schemaName}`, import.meta.url), 'utf8')) as object;
  return new Ajv({ allErrors: true }).compile(schema);
}

/** "/versions/1/tag" -> "versions[1].tag" */
function fieldName(pointer: string): string {
  const parts = pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  return parts.reduce((name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name ? `${name}.${part}` : part), '');
}

function describeError(error: ErrorObject): string {
  const field = fieldName(error.instancePath) || '(top level)';
  if (error.keyword === 'additionalProperties') {
    return `${field}: unknown field "${String(error.params.additionalProperty)}"`;
  }
  if (error.keyword === 'enum') {
    return `${field}: must be one of ${(error.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  }
  if (error.keyword === 'required') return `${field}: missing required field "${String(error.params.missingProperty)}"`;
  return `${field}: ${error.message ?? 'is invalid'}`;
}

/** Errors of a oneOf hide the useful branch errors: keep the most specific ones. */
function usefulErrors(errors: ErrorObject[]): ErrorObject[] {
  const specific = errors.filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'type');
  return specific.length > 0 ? specific : errors.filter((e) => e.keyword !== 'oneOf');
}

/** The problems of `document` against schemas/`schemaName`, deduplicated; empty when it is valid. */
export async function schemaProblems(schemaName: string, document: unknown): Promise<string[]> {
  let validator = validators.get(schemaName);
  if (!validator) validators.set(schemaName, (validator = compile(schemaName)));
  const validate = await validator;
  return validate(document) ? [] : [...new Set(usefulErrors(validate.errors ?? []).map(describeError))];
}
