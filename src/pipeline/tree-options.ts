/**
 * The recipe options that change the image tree: `drop` (paths left out to
 * make the initramfs smaller), `slim` (everything but what a traced workload
 * needs left out, src/slim/slim-tree.ts) and `files` (extra files added).
 * All act on the flattened tree, before the agent stage adds /init and /etc/rampack.
 */
import { InputError } from '../errors.ts';
import { bytePath, displayPath, parentPath, sortByTreePath, type TreeEntry } from '../tree/entry.ts';
import { slimTree } from '../slim/slim-tree.ts';
import { INPUT_FILE_LIMITS, readInputFile } from '../util/input-file.ts';
import type { Logger } from '../util/log.ts';
import { dropPaths, treeDifference, type SlimSummary } from '../tree/transforms.ts';
import type { BuildTarget, ExtraFile } from './target.ts';

/** Reads a recipe's extra file; the build memoizes it (extraFileReader) since each prediction round applies the options again. */
function readExtraFile(file: ExtraFile, origin: string): Promise<Buffer> {
  return readInputFile(file.source, `extra file for ${file.destination} (${origin})`, INPUT_FILE_LIMITS.extraFile);
}

/**
 * Adds the files to the tree (replacing files at their paths), creating
 * missing parent directories 0755 root:root. A parent that exists as
 * anything but a directory, or a destination that is a directory, is an error.
 */
export async function addFiles(
  entries: readonly TreeEntry[],
  files: readonly ExtraFile[],
  mtime: number,
  origin: string,
  read: (file: ExtraFile) => Promise<Buffer> = (file) => readExtraFile(file, origin),
): Promise<TreeEntry[]> {
  if (files.length === 0) return [...entries];
  const tree = new Map(entries.map((entry) => [entry.path, entry]));
  for (const file of files) {
    const path = bytePath(file.destination.slice(1));
    const existing = tree.get(path);
    if (existing?.type === 'dir') throw new InputError(`files of ${origin}: ${file.destination} is a directory in the image`);
    for (let parent = parentPath(path); parent !== ''; parent = parentPath(parent)) {
      const node = tree.get(parent);
      if (node === undefined) tree.set(parent, { path: parent, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime });
      else if (node.type !== 'dir') {
        throw new InputError(`files of ${origin}: cannot add ${file.destination}, /${displayPath(parent)} is a ${node.type} in the image`);
      }
    }
    const data = await read(file);
    tree.set(path, { path, type: 'file', mode: file.mode, uid: file.uid, gid: file.gid, mtime, data });
  }
  return sortByTreePath(tree.values());
}

/** Reads each extra file once, however often the options are applied. */
export function extraFileReader(origin: string): (file: ExtraFile) => Promise<Buffer> {
  const contents = new Map<ExtraFile, Promise<Buffer>>();
  return (file) => {
    if (!contents.has(file)) contents.set(file, readExtraFile(file, origin));
    return contents.get(file)!;
  };
}

/** Applies a target's drop, slim and files options to a flattened tree, logging what drop and slim saved. */
export async function applyTreeOptions(
  entries: readonly TreeEntry[],
  target: Pick<BuildTarget, 'drop' | 'files' | 'origin' | 'arch'>,
  context: { mtime: number; log: Logger; label: string; read?: (file: ExtraFile) => Promise<Buffer>; slim?: { trace: readonly string[]; keep: readonly string[] } },
): Promise<{ entries: TreeEntry[]; slim?: SlimSummary }> {
  const dropped = dropPaths(entries, target.drop ?? []);
  if (target.drop?.length) {
    context.log.info(`${context.label}: drop removed ${dropped.removed} entries, ${dropped.bytesSaved} bytes of file data saved`);
  }
  let tree = dropped.entries;
  let summary: SlimSummary | undefined;
  if (context.slim !== undefined) {
    const slimmed = await slimTree(tree, { ...context.slim, arch: target.arch });
    const keptBytes = treeDifference(tree, []).bytesSaved - slimmed.bytesSaved;
    summary = { keptEntries: slimmed.entries.length, removedEntries: slimmed.removed, keptBytes, droppedBytes: slimmed.bytesSaved };
    context.log.info(`${context.label}: slim kept ${slimmed.entries.length} of ${tree.length} entries, removed ${slimmed.removed} entries, ${slimmed.bytesSaved} bytes of file data saved (${keptBytes} kept)`);
    tree = slimmed.entries;
  }
  const withFiles = await addFiles(tree, target.files ?? [], context.mtime, target.origin, context.read);
  return summary ? { entries: withFiles, slim: summary } : { entries: withFiles };
}
