/**
 * One build: image reference + agent -> compressed initramfs file. Stages:
 * resolve -> fetch blobs -> unpack layers (cached) -> flatten -> inject agent
 * -> the image's part as parallel compressed newc shards (cached) + rampack's
 * archive -> file (temp name, renamed). See archive.ts. Shards are written
 * ahead from a prediction while layers unpack (speculate.ts).
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { checkAgentBinary } from '../agent/elf.ts';
import { injectAgent, type DroppedXattr, type InjectedTree } from '../agent/inject.ts';
import { entryPageBytes, type TreeFootprint } from '../boot/memory.ts';
import { bootRequirements } from '../boot/requirements.ts';
import { describeCompressor, describeGunzip, fileExtension } from '../compress/index.ts';
import { InputError } from '../errors.ts';
import type { ContentStore, ResolvedImage } from '../oci/content.ts';
import type { Descriptor } from '../oci/types.ts';
import type { FlattenResult } from '../layers/flatten.ts';
import { unpackImageLayers, type LayerProgress, type UnpackedLayer } from '../layers/unpack.ts';
import type { ManifestImage } from '../manifest/manifest.ts';
import { cellKey, type BuildTarget } from './target.ts';
import { applyTreeOptions, extraFileReader } from './tree-options.ts';
import { readTraceFile, type SlimTrace } from '../slim/trace-file.ts';
import { bytePath, dataSize, displayPath, type TreeEntry } from '../tree/entry.ts';
import { memoryBudgetWarning, sizeByDirectory, type DirectorySize, type SizedFile } from '../inspect/size.ts';
import { INPUT_FILE_LIMITS, readInputFile } from '../util/input-file.ts';
import { formatBytes, silentLogger, silentReporter, type BuildReporter, type Logger } from '../util/log.ts';
import { imageArchive, type ImageArchive } from './image-part.ts';
import { writeInitramfs, type WrittenInitramfs } from './output.ts';
import { ShardWorkers } from './shard-workers.ts';
import { ShardSpeculator } from './speculate.ts';
import type { SourceOptions } from '../sources/open.ts';
import { flattenImage, openImage } from './image.ts';

export interface BuildOptions extends SourceOptions {
  outDir: string;
  log: Logger;
  /** Receives stage events (resolve, pull, flatten, compress) for progress display. */
  reporter?: BuildReporter;
  /** SOURCE_DATE_EPOCH: newer mtimes are clamped to it, and added files get it. */
  sourceDateEpoch?: number;
  /** Uncompressed data per shard of the image part (default archive.ts SHARD_BYTES). */
  shardBytes?: number;
}

async function readAgent(target: BuildTarget): Promise<Buffer> {
  if (!target.agent) {
    throw new InputError(`no agent for ${target.language} ${target.version} ${target.arch} (${target.origin})`, {
      hint: 'set agent in the recipe or pass --agent FILE',
    });
  }
  return readInputFile(target.agent, `${target.arch} agent`, INPUT_FILE_LIMITS.agent, 'build the agent first, or point the recipe or --agent at it');
}

export function outputFileName(target: Pick<BuildTarget, 'language' | 'version' | 'arch' | 'variant' | 'compression'>): string {
  return `${cellKey(target)}.cpio${fileExtension(target.compression)}`;
}

/** "go 1.27 x86_64", "go 1.27 x86_64 slim": how logs name a target. */
export function targetLabel(target: Pick<BuildTarget, 'language' | 'version' | 'arch' | 'variant'>): string {
  return `${target.language} ${target.version} ${target.arch}${target.variant ? ` ${target.variant}` : ''}`;
}

/**
 * The trace a slim variant is made from, refused when it was taken from
 * another image: its files would be another image's, and a file the workload
 * needs could be missing. `rampack slim RECIPE` takes a new one.
 */
async function slimTraceFor(target: BuildTarget, image: ResolvedImage): Promise<SlimTrace> {
  const trace = await readTraceFile(target.slim!.traceFile);
  if (trace.manifestDigest !== image.manifestDigest) {
    throw new InputError(
      `trace ${target.slim!.traceFile} was taken from ${trace.image} (${trace.manifestDigest}), but ${targetLabel(target)} is built from ${image.reference} (${image.manifestDigest})`,
      { hint: `trace the new image: rampack slim ${target.origin} --version ${target.version} --arch ${target.arch}` },
    );
  }
  return trace;
}

/** mtime of the files rampack adds: SOURCE_DATE_EPOCH, else the image's creation time. */
function addedFilesMtime(image: ResolvedImage, sourceDateEpoch?: number): number {
  if (sourceDateEpoch !== undefined) return sourceDateEpoch;
  const created = image.config.created ? Date.parse(image.config.created) : NaN;
  return Number.isNaN(created) ? 0 : Math.max(0, Math.floor(created / 1000));
}

/** Bytes of layer blobs: all of them, and those that came over the network (cached ones do not). */
interface PullCount {
  total: number;
  downloaded: number;
}

/**
 * Every layer blob made local (downloaded into the cache for registries; the
 * transport bounds requests per registry) and unpacked as it downloads where
 * the store can (else as soon as it is local), so the download is off the
 * critical path.
 */
async function pullAndUnpack(
  image: ResolvedImage,
  store: ContentStore,
  count: PullCount,
  options: BuildOptions,
  reporter: BuildReporter,
  speculator: ShardSpeculator,
): Promise<{ layers: UnpackedLayer[]; downloaded: Promise<unknown> }> {
  reporter.start('pull');
  const incoming = image.layers.map((descriptor) => store.incomingBlob?.(descriptor));
  const blobPaths = image.layers.map((descriptor, index) => incoming[index]?.path ?? store.blobPath(descriptor));
  // Each is awaited below; until then a failure must not count as unhandled.
  for (const blobPath of blobPaths) blobPath.catch(() => {});
  void Promise.all(blobPaths).then(
    () => reporter.end('pull', `${image.layers.length} layers, ${formatBytes(count.total)} (${formatBytes(count.downloaded)} downloaded)`),
    () => {},
  );
  reporter.start('flatten');
  let entries = 0;
  const onUnpacked = (layer: UnpackedLayer, index: number) => {
    options.log.debug(`layer ${index + 1}/${image.layers.length} ${layer.diffId}: ${layer.entries.length} entries`);
    entries += layer.entries.length;
    reporter.progress('flatten', { done: entries, unit: 'entries' });
    speculator.layerDone(index, layer);
  };
  const blobOf = (_descriptor: Descriptor, index: number) => incoming[index] ?? blobPaths[index]!;
  const onProgress = (progress: LayerProgress, index: number) => speculator.layerProgress(index, progress);
  const layers = await unpackImageLayers(image.layers, image.config.rootfs.diff_ids, blobOf, options.cache, onUnpacked, onProgress);
  // An incoming blob's stream ends once its bytes are verified; its file is synced and renamed into the cache after that.
  return { layers, downloaded: Promise.all(blobPaths) };
}

/** What the build writes for a target, from the image's layers: the flattened tree with the recipe's options and rampack's files applied. */
interface ComposedTree {
  flat: FlattenResult;
  injected: InjectedTree;
}

type ComposeTree = (layers: UnpackedLayer[], log: Logger) => Promise<ComposedTree>;

function treeComposer(target: BuildTarget, image: ResolvedImage, agent: Buffer, agentSha256: string, mtime: number, label: string, trace?: SlimTrace): ComposeTree {
  const read = extraFileReader(target.origin);
  // The working directory is entered, never opened: the tracer cannot see it.
  const workingDir = bytePath((image.config.config?.WorkingDir ?? '').replace(/^\/+/, ''));
  const slim = trace && { trace: workingDir ? [...trace.paths, workingDir] : trace.paths, keep: target.slim!.keep };
  return async (layers, log) => {
    const flat = flattenImage(layers, image);
    const tree = await applyTreeOptions(flat.entries, target, { mtime, log, label, read, slim });
    const injected = injectAgent(tree.entries, {
      image,
      language: target.language,
      version: target.version,
      arch: target.arch,
      agent,
      agentSha256,
      extraEnv: target.env,
      droppedXattrs: flat.droppedXattrs,
      mtime,
      ...(tree.slim ? { slim: tree.slim } : {}),
    });
    return { flat, injected };
  };
}

function reportTree({ flat, injected }: ComposedTree, log: Logger, reporter: BuildReporter, label: string): void {
  for (const warning of flat.warnings) log.warn(`${label}: ${warning}`);
  warnDroppedXattrs(injected.recordedXattrs, log, label);
  reporter.end('flatten', `${injected.image.length + injected.added.length} entries`);
}

/**
 * What a built tree costs a VM (boot/memory.ts) and its files' sizes, in one
 * pass: a hard-link group's data counts once, on its first member. Paths stay
 * byte strings; only the directories shown are turned into text.
 */
function treeCost(entries: readonly TreeEntry[]): { footprint: TreeFootprint; files: SizedFile[] } {
  const seenInodes = new Set<number>();
  const files: SizedFile[] = [];
  let pageBytes = 0;
  for (const entry of entries) {
    const linked = entry.inode !== undefined && seenInodes.has(entry.inode);
    if (entry.inode !== undefined) seenInodes.add(entry.inode);
    const size = linked ? 0 : dataSize(entry);
    pageBytes += entryPageBytes(entry.type, size);
    if (entry.type === 'file' && !linked) files.push({ path: entry.path, size });
  }
  return { footprint: { pageBytes, entries: entries.length }, files };
}

/** The largest directories two levels deep, named as text. */
function largestDirectories(files: readonly SizedFile[]): DirectorySize[] {
  return sizeByDirectory(files, 2)
    .slice(0, 5)
    .map((directory) => ({ ...directory, path: displayPath(directory.path) }));
}

function warnDroppedXattrs(xattrs: readonly DroppedXattr[], log: Logger, label: string): void {
  if (xattrs.length === 0) return;
  const listed = xattrs.map((x) => `/${displayPath(x.path)} (${x.name})`);
  log.warn(`${label}: newc cannot carry extended attributes; recorded in /etc/rampack/xattrs.json for the agent to restore: ${listed.join(', ')}`);
}

export async function buildTarget(target: BuildTarget, options: BuildOptions): Promise<ManifestImage> {
  const label = targetLabel(target);
  const agent = await readAgent(target);
  const elf = checkAgentBinary(agent, target.arch, target.agent!);
  if (elf.interpreter) {
    options.log.warn(`${label}: agent ${target.agent} is dynamically linked (${elf.interpreter}); it runs only if the image provides that loader`);
  }
  const agentSha256 = createHash('sha256').update(agent).digest('hex');
  // Before any layer is read or shard written: a bad RAMPACK_INFLATE or RAMPACK_DEFLATE fails the build here.
  const gunzip = describeGunzip();
  const compressor = describeCompressor(target.compression);

  const reporter = options.reporter ?? silentReporter;
  const pull: PullCount = { total: 0, downloaded: 0 };
  reporter.start('resolve');
  const { store, image } = await openImage(target.image, target.arch, {
    ...options,
    onBlobBytes: (_digest, bytes) => {
      pull.downloaded += bytes;
      reporter.progress('pull', { done: pull.downloaded, total: pull.total, unit: 'bytes' });
    },
  });
  pull.total = image.layers.reduce((sum, layer) => sum + layer.size, 0);
  reporter.end('resolve', `${image.manifestDigest} (${image.layers.length} layers)`);
  options.log.info(`${label}: ${image.reference} -> ${image.manifestDigest} (${image.layers.length} layers)`);
  options.log.debug(`${label}: gzip layers are inflated by ${gunzip}`);

  const trace = target.variant === 'slim' ? await slimTraceFor(target, image) : undefined;
  const file = outputFileName(target);
  const mtime = addedFilesMtime(image, options.sourceDateEpoch);
  const compose = treeComposer(target, image, agent, agentSha256, mtime, label, trace);
  const settings = { compression: target.compression, level: target.level, clampMtime: options.sourceDateEpoch, shardBytes: options.shardBytes };
  const workers = new ShardWorkers(options.cache);
  let composed: ComposedTree;
  let base: ImageArchive;
  let written: WrittenInitramfs;
  try {
    // A slim tree depends on the whole image (programs' libraries, symlinks anywhere): predicting it from part of the layers would waste the CPU.
    const predict = async (layers: UnpackedLayer[]) => (trace ? [] : (await compose(layers, silentLogger)).injected.image);
    const speculator = new ShardSpeculator(workers, predict, settings, image.layers.length);
    const pulled = await pullAndUnpack(image, store, pull, options, reporter, speculator);
    composed = await compose(pulled.layers, options.log);
    reportTree(composed, options.log, reporter, label);
    reporter.start('compress');
    options.log.debug(`${label}: ${compressor}`);
    const report = (bytes: number) => reporter.progress('compress', { done: bytes, unit: 'bytes' });
    base = await imageArchive(composed.injected.image, settings, options.cache, workers, report, speculator);
    if (speculator.stats.written > 0) options.log.debug(`${label}: ${speculator.stats.used} of the ${speculator.stats.written} shards written ahead were used`);
    written = await writeInitramfs(join(options.outDir, file), base, composed.injected.added, settings, options.cache);
    // The build's cache lease (cache/lease.ts) must outlast its writes to the cache.
    await pulled.downloaded;
  } finally {
    await workers.close();
  }
  const { injected } = composed;
  const entries = [...injected.image, ...injected.added];
  const ratio = (written.uncompressedBytes / Math.max(1, written.size)).toFixed(1);
  const reused = written.unchanged ? ', file unchanged' : base.fromCache ? ', image part from cache' : '';
  reporter.end('compress', `${formatBytes(written.uncompressedBytes)} -> ${formatBytes(written.size)} (${target.compression}, ${ratio}x${reused})`);
  options.log.info(`${label}: wrote ${file} (${entries.length} entries, ${written.uncompressedBytes} -> ${written.size} bytes${reused})`);
  const cost = treeCost(entries);
  const directories = largestDirectories(cost.files);
  options.log.debug(`${label}: largest directories: ${directories.map((dir) => `${dir.path} ${formatBytes(dir.bytes)}`).join(', ')}`);
  const boot = bootRequirements({ arch: target.arch, compression: target.compression, compressedBytes: written.size, tree: cost.footprint });
  // What the image costs a VM: the unpacked bytes live in guest RAM, so they decide its memory and cold start.
  options.log.info(`${label}: ${formatBytes(written.uncompressedBytes)} unpacked, boots in ${boot.minMemoryMiB} MiB (boot.minMemoryMiB with ${boot.cmdline})`);
  if (target.memoryBudget !== undefined) {
    const check = { label, budgetBytes: target.memoryBudget, minMemoryMiB: boot.minMemoryMiB, compressedBytes: written.size, uncompressedBytes: written.uncompressedBytes, directories };
    const warning = memoryBudgetWarning(check);
    if (warning !== undefined) options.log.warn(warning);
  }
  return {
    language: target.language,
    version: target.version,
    default: target.isDefault,
    arch: target.arch,
    ...(target.variant ? { variant: target.variant } : {}),
    file,
    sha256: written.sha256,
    size: written.size,
    compression: target.compression,
    uncompressedSize: written.uncompressedBytes,
    source: {
      reference: image.reference,
      manifestDigest: image.manifestDigest,
      ...(image.indexDigest ? { indexDigest: image.indexDigest } : {}),
      configDigest: image.configDigest,
    },
    agent: { sha256: agentSha256 },
    env: injected.imageJson.env,
    boot,
  };
}
