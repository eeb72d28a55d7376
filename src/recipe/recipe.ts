/**
 * Recipes: YAML files that say how to build one language's images. The JSON
 * Schema in schemas/recipe.schema.json is the contract; docs/recipe.md
 * explains it.
 */
import { readdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Document } from 'yaml';
import type { BuildTarget, ExtraFile, SlimSettings } from '../pipeline/target.ts';
import { InputError, UsageError } from '../errors.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { parseByteSize } from '../inspect/size.ts';
import { INPUT_FILE_LIMITS, readInputText } from '../util/input-file.ts';
import { fieldProblems, schemaProblems } from '../util/json-schema.ts';

export interface RecipeVersion {
  version: string;
  tag?: string;
  digest?: string;
  default?: boolean;
}

/** The agent inside an image: a multi-arch index gives each arch its own binary. */
export interface AgentImage {
  image: string;
  path?: string;
}

/** A file path ({arch} replaced) or an image holding the agent. */
export type AgentSpec = string | AgentImage;

export interface RecipeFile {
  source: string;
  destination: string;
  /** Octal string, e.g. "0755". */
  mode?: string;
  /** Numeric "uid:gid". */
  owner?: string;
}

export interface Recipe {
  language: string;
  image: string;
  versions: RecipeVersion[];
  arches?: Arch[];
  agent?: AgentSpec | Partial<Record<Arch, AgentSpec>>;
  compression?: 'gzip' | 'zstd';
  level?: number;
  env?: string[];
  smoke?: string[];
  /** Kernel per arch for `verify --boot --recipe`. */
  kernel?: Partial<Record<Arch, string>>;
  memoryBudget?: string;
  files?: RecipeFile[];
  drop?: string[];
  slim?: RecipeSlim;
}

/** The recipe's `slim:` section (schemas/recipe.schema.json). */
export interface RecipeSlim {
  workload: string[][];
  files?: string;
  keep?: string[];
  trace?: string;
}

const DEFAULT_TRACE = 'traces/{language}-{version}-{arch}.trace';

export const DEFAULT_AGENT_PATH = '/agent';
/** YAML alias expansions a recipe may use (the yaml package's own default is 100). */
const MAX_ALIASES = 100;

function agentSpecs(recipe: Recipe): Array<[field: string, spec: AgentSpec]> {
  const agent = recipe.agent;
  if (agent === undefined) return [];
  if (typeof agent === 'string' || 'image' in agent) return [['agent', agent as AgentSpec]];
  return Object.entries(agent).map(([arch, spec]) => [`agent.${arch}`, spec]);
}

/** "/a/./b", "/a/../b" or "/a//b" would not name the path the reader expects. */
function isCleanAbsolutePath(path: string): boolean {
  return path.split('/').slice(1).every((part) => part !== '' && part !== '.' && part !== '..');
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
  for (const [field, spec] of agentSpecs(recipe)) {
    if (typeof spec !== 'string' && spec.path !== undefined && !isCleanAbsolutePath(spec.path)) {
      problems.push(`${field}.path: "${spec.path}" must be a clean absolute path (no ., .. or //)`);
    }
  }
  recipe.files?.forEach((file, i) => {
    if (!isCleanAbsolutePath(file.destination)) {
      problems.push(`files[${i}].destination: "${file.destination}" must be a clean absolute path (no ., .. or //)`);
    } else if (file.destination === '/init') {
      problems.push(`files[${i}].destination: /init is the agent; set agent instead`);
    }
  });
  return problems;
}

/**
 * The recipe as plain data. Aliases are expanded here, and an alias bomb (aliases of aliases, each
 * doubling the data) stops at the yaml package's limit of MAX_ALIASES expansions instead of filling memory.
 */
function recipeObject(document: Document, file: string): Recipe {
  try {
    return document.toJS({ maxAliasCount: MAX_ALIASES }) as Recipe;
  } catch (error) {
    throw new InputError(`recipe ${file}: ${(error as Error).message}`, { hint: 'a recipe needs no more than a few YAML aliases; write the values out' });
  }
}

/** Reads and validates one recipe file. */
export async function loadRecipe(file: string): Promise<Recipe> {
  const text = await readInputText(file, 'recipe', INPUT_FILE_LIMITS.recipe);
  // Loaded here: a build from --image reads no YAML and need not load the parser.
  const { parseDocument } = await import('yaml');
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    const first = document.errors[0]!;
    const where = first.linePos ? `:${first.linePos[0].line}:${first.linePos[0].col}` : '';
    throw new InputError(`recipe ${file}${where}: invalid YAML: ${first.message.split('\n')[0]}`);
  }
  const recipe = recipeObject(document, file);
  const problems = await schemaProblems('recipe.schema.json', recipe);
  if (problems.length === 0) problems.push(...semanticProblems(recipe));
  if (problems.length > 0) {
    throw new InputError(`recipe ${file}: ${[...new Set(problems)].join('; ')}`, {
      hint: 'see docs/recipe.md and schemas/recipe.schema.json',
    });
  }
  return recipe;
}

/** The recipe field each such flag stands for: a JSON pointer into schemas/recipe.schema.json. */
const FLAG_FIELDS = {
  '--language': '/properties/language',
  '--version': '/properties/versions/items/properties/version',
  '--env': '/properties/env/items',
  '--level': '/properties/level',
} as const;

export type FieldFlag = keyof typeof FLAG_FIELDS;

/**
 * Checks a flag's value by the very rule of the recipe field it stands for, since it ends up in the
 * same places (file names, manifest keys, log lines). `source` says where a value not typed as the
 * flag came from ("language from --image REF").
 */
export async function checkFlagValue(flag: FieldFlag, value: unknown, source: string = flag): Promise<void> {
  const problems = await fieldProblems('recipe.schema.json', FLAG_FIELDS[flag], value, `${source} ${JSON.stringify(value)}`);
  if (problems.length > 0) {
    throw new UsageError(problems.join('; '), { hint: `${flag} takes what the recipe field takes (docs/recipe.md)` });
  }
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

function agentFor(recipe: Recipe, arch: Arch): Pick<BuildTarget, 'agent' | 'agentImage'> {
  const agent = recipe.agent;
  const spec = typeof agent === 'string' || (agent && 'image' in agent) ? (agent as AgentSpec) : agent?.[arch];
  if (spec === undefined) return {};
  if (typeof spec === 'string') return { agent: resolve(spec.replaceAll('{arch}', arch)) };
  return { agentImage: { reference: spec.image, path: spec.path ?? DEFAULT_AGENT_PATH } };
}

function extraFiles(recipe: Recipe, arch: Arch): ExtraFile[] {
  return (recipe.files ?? []).map((file) => {
    const [uid, gid] = (file.owner ?? '0:0').split(':').map(Number) as [number, number];
    return {
      source: resolve(file.source.replaceAll('{arch}', arch)),
      destination: file.destination,
      mode: Number.parseInt(file.mode ?? '0644', 8),
      uid,
      gid,
    };
  });
}

function slimSettings(recipe: Recipe, origin: string, version: string, arch: Arch): SlimSettings | undefined {
  if (recipe.slim === undefined) return undefined;
  const recipeDir = dirname(resolve(origin));
  const trace = (recipe.slim.trace ?? DEFAULT_TRACE).replaceAll('{language}', recipe.language).replaceAll('{version}', version).replaceAll('{arch}', arch);
  return {
    workload: recipe.slim.workload,
    ...(recipe.slim.files === undefined ? {} : { workloadFiles: resolve(recipeDir, recipe.slim.files) }),
    keep: recipe.slim.keep ?? [],
    traceFile: resolve(recipeDir, trace),
  };
}

/** Every language x version x arch cell of a recipe, each followed by its slim variant when the recipe has a slim section. */
export function recipeTargets(recipe: Recipe, origin: string): BuildTarget[] {
  return fullTargets(recipe, origin).flatMap((target) => (target.slim ? [target, { ...target, variant: 'slim' as const }] : [target]));
}

function fullTargets(recipe: Recipe, origin: string): BuildTarget[] {
  const defaultVersion = recipe.versions.find((entry) => entry.default) ?? recipe.versions[0]!;
  return recipe.versions.flatMap((entry) =>
    (recipe.arches ?? ARCHES).map((arch) => ({
      language: recipe.language,
      version: entry.version,
      isDefault: entry === defaultVersion,
      arch,
      image: imageReferenceFor(recipe.image, entry),
      ...agentFor(recipe, arch),
      compression: recipe.compression ?? 'gzip',
      level: recipe.level,
      env: recipe.env ?? [],
      smoke: recipe.smoke,
      memoryBudget: recipe.memoryBudget === undefined ? undefined : parseByteSize(recipe.memoryBudget, `recipe ${origin}: memoryBudget`),
      files: extraFiles(recipe, arch),
      drop: recipe.drop ?? [],
      slim: slimSettings(recipe, origin, entry.version, arch),
      origin,
    })),
  );
}
