/**
 * The build matrix: every language x version x arch cell of a set of
 * recipes, each with a stable key (`go-1.25-x86_64`) and an input digest,
 * printed by `rampack plan --json` in the form a GitHub Actions matrix takes
 * (`{"include": [...]}`); `rampack build --only KEY` builds one cell.
 */
import { access } from 'node:fs/promises';
import { InputError, UsageError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import { sha256Digest } from '../util/digest.ts';
import { INPUT_FILE_LIMITS, readInputFile } from '../util/input-file.ts';
import { TOOL_VERSION } from '../version.ts';
import { cellKey, type BuildTarget, type Variant } from '../pipeline/target.ts';
import { loadRecipe, recipeFiles, recipeTargets } from './recipe.ts';

export interface PlanCell {
  key: string;
  language: string;
  version: string;
  arch: Arch;
  variant?: Variant;
  default: boolean;
  image: string;
  recipe: string;
  inputDigest: string;
}

/** Every cell of the recipes, refusing two recipes that produce the same key. */
export async function loadTargets(paths: readonly string[]): Promise<BuildTarget[]> {
  const byKey = new Map<string, BuildTarget>();
  for (const file of await recipeFiles(paths)) {
    for (const target of recipeTargets(await loadRecipe(file), file)) {
      const other = byKey.get(cellKey(target));
      if (other) throw new InputError(`recipes ${other.origin} and ${file} both build ${cellKey(target)}`, { hint: 'give each language one recipe' });
      byKey.set(cellKey(target), target);
    }
  }
  return [...byKey.values()];
}

/**
 * Slim variants whose trace was never taken are left out (with a warning), so
 * a recipe can gain a slim section before its images are traced; `build --only
 * KEY-slim` asks for one and fails without its trace. A trace of another image
 * fails the variant's build (pipeline/build.ts).
 */
export async function withoutUntracedSlims(targets: readonly BuildTarget[], warn: (message: string) => void): Promise<BuildTarget[]> {
  const kept: BuildTarget[] = [];
  for (const target of targets) {
    if (target.variant === 'slim' && !(await access(target.slim!.traceFile).then(() => true, () => false))) {
      warn(`${cellKey(target)}: no trace ${target.slim!.traceFile}, slim variant left out; take it with: rampack slim ${target.origin} --version ${target.version} --arch ${target.arch}`);
    } else kept.push(target);
  }
  return kept;
}

const INPUT_NAMES = { agent: 'agent', extraFile: 'extra file', trace: 'trace' } as const;

async function fileSha256(path: string, what: keyof typeof INPUT_NAMES): Promise<string> {
  const bytes = await readInputFile(path, INPUT_NAMES[what], INPUT_FILE_LIMITS[what], 'the input digest covers it: build or fetch it before planning');
  return sha256Digest(bytes);
}

/**
 * sha256 over what the build reads before it fetches anything: the cell's
 * recipe settings, the agent (its bytes, or its image reference), the extra
 * files' bytes and rampack's version. A tag can move, so only digest-pinned
 * images make equal input digests mean equal outputs.
 */
export async function inputDigest(target: BuildTarget): Promise<string> {
  const agent = target.agent ? { sha256: await fileSha256(target.agent, 'agent') } : (target.agentImage ?? null);
  const files = [];
  for (const file of target.files ?? []) {
    files.push({ destination: file.destination, mode: file.mode, uid: file.uid, gid: file.gid, sha256: await fileSha256(file.source, 'extraFile') });
  }
  // A slim variant is made from its trace: a new trace is a new input.
  const slim = target.variant === 'slim' && target.slim ? { keep: target.slim.keep, trace: await fileSha256(target.slim.traceFile, 'trace') } : null;
  const inputs = {
    tool: TOOL_VERSION,
    language: target.language,
    version: target.version,
    default: target.isDefault,
    arch: target.arch,
    image: target.image,
    compression: target.compression,
    level: target.level ?? null,
    env: target.env,
    drop: target.drop ?? [],
    files,
    agent,
    ...(slim ? { variant: target.variant, slim } : {}),
  };
  return sha256Digest(JSON.stringify(inputs));
}

export async function planCells(targets: readonly BuildTarget[]): Promise<PlanCell[]> {
  const cells: PlanCell[] = [];
  for (const target of targets) {
    cells.push({
      key: cellKey(target),
      language: target.language,
      version: target.version,
      arch: target.arch,
      ...(target.variant ? { variant: target.variant } : {}),
      default: target.isDefault,
      image: target.image,
      recipe: target.origin,
      inputDigest: await inputDigest(target),
    });
  }
  return cells;
}

/** The one target with this key; an unknown key lists the known ones. */
export function selectCell(targets: readonly BuildTarget[], key: string): BuildTarget {
  const target = targets.find((candidate) => cellKey(candidate) === key);
  if (!target) {
    throw new UsageError(`no cell ${key} in these recipes`, { hint: `known cells: ${targets.map(cellKey).join(', ')}` });
  }
  return target;
}

/** `--only KEY`: just that cell; without a key, all of them. */
export function selectCells(targets: BuildTarget[], key: string | undefined): BuildTarget[] {
  return key === undefined ? targets : [selectCell(targets, key)];
}
