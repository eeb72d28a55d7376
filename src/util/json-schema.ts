/**
 * Validation against rampack's published JSON Schemas (schemas/*.json), with
 * problems phrased as "field: what is wrong" so messages can name the file,
 * the field and the problem.
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

const ajv = new Ajv({ allErrors: true });
const loaded = new Map<string, Promise<void>>();

/** Loads schemas/`schemaName` into the validator once, under that name. */
async function load(schemaName: string): Promise<void> {
  let loading = loaded.get(schemaName);
  if (!loading) {
    loading = readFile(new URL(`../../schemas/${schemaName}`, import.meta.url), 'utf8').then((text) => void ajv.addSchema(JSON.parse(text) as object, schemaName));
    loaded.set(schemaName, loading);
  }
  await loading;
}

/** The validator of the whole schema, or of the part at JSON pointer `pointer` ("/properties/language"). */
async function validatorOf(schemaName: string, pointer = ''): Promise<ValidateFunction> {
  await load(schemaName);
  const validate = ajv.getSchema(`${schemaName}#${pointer}`);
  if (!validate) throw new Error(`${schemaName} has no ${pointer}`);
  return validate;
}

/** "/versions/1/tag" -> "versions[1].tag" */
function fieldName(pointer: string): string {
  const parts = pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  return parts.reduce((name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name ? `${name}.${part}` : part), '');
}

function describeError(error: ErrorObject, topLevel = '(top level)'): string {
  const field = fieldName(error.instancePath) || topLevel;
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
  return problemsOf(await validatorOf(schemaName), document);
}

/**
 * The problems of one value against one field of a schema (`pointer` names the field's schema,
 * e.g. "/properties/language"), phrased with `name` as the field: how a flag that sets what a
 * recipe field sets is checked by the very same rule.
 */
export async function fieldProblems(schemaName: string, pointer: string, value: unknown, name: string): Promise<string[]> {
  return problemsOf(await validatorOf(schemaName, pointer), value, name);
}

function problemsOf(validate: ValidateFunction, value: unknown, topLevel?: string): string[] {
  return validate(value) ? [] : [...new Set(usefulErrors(validate.errors ?? []).map((error) => describeError(error, topLevel)))];
}
