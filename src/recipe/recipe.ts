/**
 * Recipes: YAML files that say how to build one language's images. The JSON
 * Schema in schemas/recipe.schema.json is the contract; docs/recipe.md
 * explains it.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import type { Compression } from '../compress/index.ts';
import { InputError } from '../errors.ts';
import { ARCHES, type Arch } from '../image/source.ts';

export interface RecipeVersion {
  version: string;
  tag?: string;
  digest?: string;
  default?: boolean;
}

export interface Recipe {
  language: string;
  image: string;
  versions: RecipeVersion[];
  arches?: Arch[];
  agent?: string | Partial<Record<Arch, string>>;
  compression?: 'gzip' | 'zstd';
  level?: number;
  env?: string[];
  smoke?: string[];
}

/** One image to build: a cell of language x version x arch. */
export interface BuildTarget {
  language: string;
  version: string;
  isDefault: boolean;
  arch: Arch;
  /** Full image reference: repository plus tag and/or digest. */
  image: string;
  /** Agent binary path, undefined when the recipe names none. */
  agent?: string;
  compression: Compression;
  level?: number;
  env: string[];
  /** Command proving the language works in the booted image. */
  smoke?: string[];
  /** Where the target came from, for messages. */
  origin: string;
}

const schemaFile = new URL('../../schemas/recipe.schema.json', import.meta.url);
let validator: ReturnType<Ajv['compile']> | undefined;

async function validate(document: unknown): Promise<ErrorObject[]> {
  if (!validator) {
    const schema = JSON.parse(await readFile(schemaFile, 'utf8')) as object;
    validator = new Ajv({ allErrors: true }).compile(schema);
  }
  return validator(document) ? [] : (validator.errors ?? []);
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

function semanticProblems(recipe: Recipe): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  recipe.versions.forEach((entry, i) => {
    if (seen.has(entry.version)) problems.push(`versions[${i}].version: "${entry.version}" is listed twice`);
    seen.add(entry.version);
  });
  if (recipe.versions.filter((entry) => entry.default).length > 1) {
    problems.push('versions: more than one version has default: true');
  }
  if (typeof recipe.agent === 'string' && (recipe.arches ?? ARCHES).length > 1 && !recipe.agent.includes('{arch}')) {
    problems.push('agent: one path for several arches; put {arch} in it or give one path per arch');
  }
  return problems;
}

/** Reads and validates one recipe file. */
export async function loadRecipe(file: string): Promise<Recipe> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new InputError(`cannot read recipe ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    const first = document.errors[0]!;
    const where = first.linePos ? `:${first.linePos[0].line}:${first.linePos[0].col}` : '';
    throw new InputError(`recipe ${file}${where}: invalid YAML: ${first.message.split('\n')[0]}`);
  }
  const recipe = document.toJS() as Recipe;
  const problems = [...usefulErrors(await validate(recipe)).map(describeError)];
  if (problems.length === 0) problems.push(...semanticProblems(recipe));
  if (problems.length > 0) {
    throw new InputError(`recipe ${file}: ${[...new Set(problems)].join('; ')}`, {
      hint: 'see docs/recipe.md and schemas/recipe.schema.json',
    });
  }
  return recipe;
}

/** Recipe files named on the command line: files as given, directories expanded to their *.yaml / *.yml. */
export async function recipeFiles(paths: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => {
      throw new InputError(`recipe ${path} does not exist`);
    });
    if (!info.isDirectory()) {
      files.push(path);
      continue;
    }
    const names = (await readdir(path)).filter((name) => /\.ya?ml$/.test(name)).sort();
    if (names.length === 0) throw new InputError(`directory ${path} holds no recipe (*.yaml)`);
    files.push(...names.map((name) => join(path, name)));
  }
  return files;
}

/** "repo" + tag/digest -> a full reference (oci: layouts take ":tag" too). */
export function imageReferenceFor(repository: string, version: RecipeVersion): string {
  const tag = version.tag ?? version.version;
  return version.digest ? `${repository}:${tag}@${version.digest}` : `${repository}:${tag}`;
}

function agentFor(recipe: Recipe, arch: Arch): string | undefined {
  const template = typeof recipe.agent === 'string' ? recipe.agent : recipe.agent?.[arch];
  return template === undefined ? undefined : resolve(template.replaceAll('{arch}', arch));
}

/** Every language x version x arch cell of a recipe. */
export function recipeTargets(recipe: Recipe, origin: string): BuildTarget[] {
  const defaultVersion = recipe.versions.find((entry) => entry.default) ?? recipe.versions[0]!;
  return recipe.versions.flatMap((entry) =>
    (recipe.arches ?? ARCHES).map((arch) => ({
      language: recipe.language,
      version: entry.version,
      isDefault: entry === defaultVersion,
      arch,
      image: imageReferenceFor(recipe.image, entry),
      agent: agentFor(recipe, arch),
      compression: recipe.compression ?? 'gzip',
      level: recipe.level,
      env: recipe.env ?? [],
      smoke: recipe.smoke,
      origin,
    })),
  );
}
