/** `rampack inspect`: what an initramfs file holds, or what an image reference resolves to. */
import { stat } from 'node:fs/promises';
import { Command } from 'commander';
import { Cache } from '../cache/cache.ts';
import { withCacheLease } from '../cache/lease.ts';
import { parseImageReference } from '../oci/reference.ts';
import { requirementsOf } from '../boot/check.ts';
import { isLocalSource } from '../sources/open.ts';
import { UsageError } from '../errors.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { inspectImage, type ImageInspection } from '../inspect/image.ts';
import { readInitramfs, summarize, type InitramfsSummary } from '../inspect/initramfs.ts';
import type { BootRequirements } from '../manifest/manifest.ts';
import type { SlimSummary } from '../tree/transforms.ts';
import { formatBytes, lineLogger } from '../util/log.ts';
import { columns, printJson, printLines } from './format.ts';
import { addRegistryFlags, registryOptionsFrom, type RegistryFlags } from './registry-flags.ts';

interface InspectFlags extends RegistryFlags {
  json?: boolean;
  top: number;
  cache?: string;
}

function parseCount(text: string): number {
  if (!/^[1-9]\d*$/.test(text)) throw new UsageError(`--top must be a positive whole number, not "${text}"`);
  return Number(text);
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

function typeCounts(summary: InitramfsSummary): string {
  return Object.entries(summary.entriesByType).map(([type, count]) => `${count} ${type}`).join(', ');
}

/** image.json's identity line: "lang 2.0 x86_64 from <ref> (<manifest digest>)". */
function imageLine(imageJson: unknown): string {
  const image = imageJson as { language?: string; version?: string; arch?: string; image?: { reference?: string; manifestDigest?: string } } | null;
  if (!image) return 'none (no /etc/rampack/image.json: not built by rampack?)';
  return `${image.language} ${image.version} ${image.arch} from ${image.image?.reference} (${image.image?.manifestDigest})`;
}

/** A slim variant's line: what its slim step kept and dropped (from image.json). */
function slimLine(imageJson: unknown): string[] {
  const slim = (imageJson as { slim?: SlimSummary } | null)?.slim;
  if (!slim) return [];
  return [`slim         kept ${slim.keptEntries} entries (${formatBytes(slim.keptBytes)} of file data), dropped ${slim.removedEntries} entries (${formatBytes(slim.droppedBytes)})`];
}

function initramfsReport(summary: InitramfsSummary & { boot?: BootRequirements }): string[] {
  return [
    `file         ${summary.file}`,
    `size         ${formatBytes(summary.size)} (${summary.compression.join(' + ')}), ${formatBytes(summary.uncompressedSize)} uncompressed, ratio ${summary.compressionRatio}x`,
    `entries      ${summary.entries} (${typeCounts(summary)})`,
    `file data    ${formatBytes(summary.fileBytes)}`,
    ...(summary.boot ? [`memory       boots in ${summary.boot.minMemoryMiB} MiB with ${summary.boot.cmdline} (the build's boot.minMemoryMiB rule)`] : []),
    `agent        ${summary.agent ? `${summary.agent.path} sha256:${summary.agent.sha256} (${formatBytes(summary.agent.size)})` : 'none (no /init)'}`,
    `image        ${imageLine(summary.imageJson)}`,
    ...slimLine(summary.imageJson),
    '',
    'size by top-level directory:',
    ...columns(summary.topLevelDirectories.map((dir) => [dir.path, formatBytes(dir.bytes), `${dir.files} file${dir.files === 1 ? '' : 's'}`])),
    '',
    'largest files:',
    ...columns(summary.largestFiles.map((file) => [formatBytes(file.size), file.path])),
    ...(summary.imageJson ? ['', '/etc/rampack/image.json:', ...JSON.stringify(summary.imageJson, null, 2).split('\n').map((line) => `  ${line}`)] : []),
  ];
}

function imageReport(inspection: ImageInspection): string[] {
  const lines = [`image        ${inspection.reference}`];
  if (inspection.indexDigest) lines.push(`index        ${inspection.indexDigest}`);
  lines.push(`platforms    ${inspection.platforms.join(', ')}`);
  for (const image of inspection.images) {
    lines.push(
      '',
      `${image.platform} (${image.arch})`,
      `  manifest   ${image.manifestDigest}`,
      `  config     ${image.configDigest}`,
      ...(image.created ? [`  created    ${image.created}`] : []),
      `  layers     ${image.layers.length}, ${formatBytes(image.size)} compressed`,
      ...columns(image.layers.map((layer, index) => [`${index + 1}`, layer.digest, formatBytes(layer.size), layer.mediaType]), '    '),
      `  workdir    ${image.workingDir}`,
      `  user       ${image.user || '(root)'}`,
      `  entrypoint ${JSON.stringify(image.entrypoint)}`,
      `  cmd        ${JSON.stringify(image.cmd)}`,
      '  env',
      ...image.env.map((variable) => `    ${variable}`),
    );
  }
  return lines;
}

async function runInspect(target: string, flags: InspectFlags): Promise<void> {
  if (await isFile(target)) {
    const contents = await readInitramfs(target);
    const arch = (contents.imageJson as { arch?: string } | undefined)?.arch;
    // The memory rule of the manifest's boot.minMemoryMiB, for a file without its manifest.
    const boot = ARCHES.includes(arch as Arch) ? requirementsOf(contents, arch as Arch) : undefined;
    const summary = { ...summarize(contents, flags.top), ...(boot ? { boot } : {}) };
    if (flags.json) printJson(summary);
    else printLines(initramfsReport(summary));
    return;
  }
  // A reference that cannot name an image is refused before the cache is touched.
  if (!isLocalSource(target)) parseImageReference(target);
  const log = lineLogger({ quiet: true });
  const cache = new Cache(flags.cache, log);
  const inspection = await withCacheLease(cache, async () => inspectImage(target, { cache, log, ...(await registryOptionsFrom(flags)) }));
  if (flags.json) printJson(inspection);
  else printLines(imageReport(inspection));
}

export function inspectCommand(): Command {
  const command = new Command('inspect')
    .description('show what an initramfs file holds, or what an image reference resolves to (without building)')
    .argument('<image-or-file>', 'an initramfs file (plain, gzip or zstd), or an image: host/repo:tag, host/repo@sha256:..., oci:DIR[:TAG]')
    .option('--json', 'print the result as JSON on stdout')
    .option('--top <n>', 'how many of the largest files to list', parseCount, 10)
    .option('--cache <dir>', 'blob cache for registry credentials and downloads (default: ~/.cache/rampack)');
  return addRegistryFlags(command)
    .addHelpText(
      'after',
      `
An existing file is read as an initramfs: entries, size by top-level directory, largest files, compression
ratio, the agent's (/init) sha256 and /etc/rampack/image.json. Anything else is an image reference: its
platforms, and for linux/amd64 and linux/arm64 the manifest, layers, sizes and config. No layer is downloaded.

Examples:
  rampack inspect out/go-1.23-x86_64.cpio.gz
  rampack inspect out/go-1.23-x86_64.cpio.gz --json | jq .topLevelDirectories
  rampack inspect docker.io/library/golang:1.23
  rampack inspect oci:./golang-layout:1.23 --json`,
    )
    .action(runInspect);
}
