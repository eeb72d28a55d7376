/** `rampack plan`: the build matrix of a set of recipes, for CI. */
import { Command } from 'commander';
import { loadTargets, planCells, withoutUntracedSlims } from '../recipe/plan.ts';

async function runPlan(paths: string[], flags: { json?: boolean }): Promise<void> {
  const targets = await loadTargets(paths.length > 0 ? paths : ['recipes']);
  const cells = await planCells(await withoutUntracedSlims(targets, (message) => process.stderr.write(`rampack: warning: ${message}\n`)));
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ include: cells })}\n`);
    return;
  }
  for (const cell of cells) {
    process.stdout.write(`${cell.key}\t${cell.inputDigest.slice(0, 19)}\t${cell.default ? 'default' : '-'}\t${cell.image}\n`);
  }
}

export function planCommand(): Command {
  return new Command('plan')
    .description('print the build matrix: one cell per language x version x arch, with a stable key and an input digest')
    .argument('[recipes...]', 'recipe files, or directories of *.yaml recipes (default: recipes/)')
    .option('--json', 'print {"include": [...]}, the form a GitHub Actions matrix takes')
    .addHelpText(
      'after',
      `
Each cell: key (language-version-arch, plus -slim for a recipe's slim variant once its trace exists, for \`rampack build --only KEY\`), language, version, arch,
default, image, recipe, inputDigest (sha256 of the recipe cell, the agent and extra files, and
rampack's version). Agents and extra files must exist when planning: their bytes are in the digest.

Examples:
  rampack plan recipes/
  rampack plan --json recipes/ > matrix.json`,
    )
    .action(runPlan);
}
