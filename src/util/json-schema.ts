/**
 * Validation against rampack's published JSON Schemas (schemas/*.json), with
 * problems phrased as "field: what is wrong" so messages can name the file,
 * the field and the problem.
 */
import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

// The schemas are rampack's own, checked against the JSON Schema meta-schema by
// test/unit/schemas.test.ts: compiling the meta-schema on every run would cost each command ~17 ms.
const ajv = new Ajv({ allErrors: true, validateSchema: false });
const schemas = new Map<string, Promise<SchemaObject>>();
const validators = new Map<string, Promise<ValidateFunction>>();

type SchemaObject = Record<string, unknown>;

/** schemas/`schemaName`, read and parsed once. */
function schemaDocument(schemaName: string): Promise<SchemaObject> {
  let schema = schemas.get(schemaName);
  if (!schema) {
    schema = readFile(new URL(`../../schemas/${schemaName}`, import.meta.url), 'utf8').then((text) => JSON.parse(text) as SchemaObject);
    schemas.set(schemaName, schema);
  }
  return schema;
}

/**
 * The validator of the whole schema, or of the part at JSON pointer `pointer` ("/properties/language"),
 * compiled once. A part is compiled on its own, with the schema's definitions beside it so its
 * "#/definitions/…" references still resolve: compiling the whole schema to check one flag would cost
 * every command tens of milliseconds.
 */
function validatorOf(schemaName: string, pointer = ''): Promise<ValidateFunction> {
  const key = `${schemaName}#${pointer}`;
  let validator = validators.get(key);
  if (!validator) {
    validator = schemaDocument(schemaName).then((schema) =>
      ajv.compile(pointer === '' ? schema : { ...schemaPart(schema, pointer, schemaName), definitions: schema.definitions }),
    );
    validators.set(key, validator);
  }
  return validator;
}

/** "/versions/1/tag" -> ["versions", "1", "tag"], "~1" and "~0" decoded. */
function pointerTokens(pointer: string): string[] {
  return pointer.split('/').slice(1).map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function schemaPart(schema: SchemaObject, pointer: string, schemaName: string): SchemaObject {
  let part: unknown = schema;
  for (const token of pointerTokens(pointer)) part = (part as SchemaObject | undefined)?.[token];
  if (typeof part !== 'object' || part === null) throw new Error(`${schemaName} has no ${pointer}`);
  return part as SchemaObject;
}

/** "/versions/1/tag" -> "versions[1].tag" */
function fieldName(pointer: string): string {
  return pointerTokens(pointer).reduce((name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name ? `${name}.${part}` : part), '');
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
