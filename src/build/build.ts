/**
 * One build: image reference + agent -> compressed initramfs file. Stages
 * stream into one another: resolve -> fetch blobs -> unpack layers ->
 * flatten -> inject agent -> newc -> compress -> file (temp name, renamed).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { checkAgentBinary } from '../agent/elf.ts';
import { injectAgent } from '../agent/inject.ts';
import { createCompressor, fileExtension } from '../compress/index.ts';
import { newcArchive } from '../cpio/writer.ts';
import { InputError } from '../errors.ts';
import { resolveImage } from '../image/resolve.ts';
import type { ResolvedImage } from '../image/source.ts';
import { flattenLayers } from '../layers/flatten.ts';
import { unpackLayer, type UnpackedLayer } from '../layers/unpack.ts';
import type { ManifestImage } from '../manifest/manifest.ts';
import type { BuildTarget } from '../recipe/recipe.ts';
import { displayPath } from '../tree/entry.ts';
import { writeAtomically } from '../util/atomic.ts';
import { mapConcurrent } from '../util/concurrency.ts';
import type { Logger } from '../util/log.ts';
import { openContentStore, type SourceOptions } from './source.ts';

export interface BuildOptions extends SourceOptions {
  outDir: string;
  cacheDir: string;
  log: Logger;
  /** SOURCE_DATE_EPOCH: newer mtimes are clamped to it, and added files get it. */
  sourceDateEpoch?: number;
}

const LAYER_CONCURRENCY = 3;

/** Counts and hashes the bytes that flow through. */
class Measure extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    done(null, chunk);
  }
  digestHex(): string {
    return this.hash.digest('hex');
  }
}

async function readAgent(target: BuildTarget): Promise<Buffer> {
  if (!target.agent) {
    throw new InputError(`no agent for ${target.language} ${target.version} ${target.arch} (${target.origin})`, {
      hint: 'set agent in the recipe or pass --agent FILE',
    });
  }
  try {
    return await readFile(target.agent);
  } catch (error) {
    throw new InputError(`cannot read agent ${target.agent} for ${target.arch}: ${(error as NodeJS.ErrnoException).code ?? error}`, {
      hint: 'build the agent first, or point the recipe or --agent at it',
    });
  }
}

export function outputFileName(target: Pick<BuildTarget, 'language' | 'version' | 'arch' | 'compression'>): string {
  return `${target.language}-${target.version}-${target.arch}.cpio${fileExtension(target.compression)}`;
}

/** mtime of the files rampack adds: SOURCE_DATE_EPOCH, else the image's creation time. */
function addedFilesMtime(image: ResolvedImage, sourceDateEpoch?: number): number {
  if (sourceDateEpoch !== undefined) return sourceDateEpoch;
  const created = image.config.created ? Date.parse(image.config.created) : NaN;
  return Number.isNaN(created) ? 0 : Math.max(0, Math.floor(created / 1000));
}

async function unpackLayers(image: ResolvedImage, store: Awaited<ReturnType<typeof openContentStore>>, options: BuildOptions): Promise<UnpackedLayer[]> {
  return mapConcurrent(image.layers, LAYER_CONCURRENCY, async (descriptor, index) => {
    const blobPath = await store.blobPath(descriptor);
    const diffId = image.config.rootfs.diff_ids[index]!;
    const layer = await unpackLayer({ blobPath, descriptor, diffId, cacheDir: options.cacheDir });
    options.log.debug(`layer ${index + 1}/${image.layers.length} ${descriptor.digest}: ${layer.entries.length} entries`);
    return layer;
  });
}

export async function buildTarget(target: BuildTarget, options: BuildOptions): Promise<ManifestImage> {
  const label = `${target.language} ${target.version} ${target.arch}`;
  const agent = await readAgent(target);
  const elf = checkAgentBinary(agent, target.arch, target.agent!);
  if (elf.interpreter) {
    options.log.warn(`${label}: agent ${target.agent} is dynamically linked (${elf.interpreter}); it runs only if the image provides that loader`);
  }
  const agentSha256 = createHash('sha256').update(agent).digest('hex');

  const store = await openContentStore(target.image, options);
  const image = await resolveImage(store, target.arch);
  options.log.info(`${label}: ${image.reference} -> ${image.manifestDigest} (${image.layers.length} layers)`);

  const flat = flattenLayers(await unpackLayers(image, store, options));
  for (const warning of flat.warnings) options.log.warn(`${label}: ${warning}`);
  if (flat.droppedXattrs.length > 0) {
    const paths = [...new Set(flat.droppedXattrs.map((x) => `/${displayPath(x.path)}`))];
    options.log.warn(`${label}: newc cannot carry extended attributes; recorded in /etc/rampack/xattrs.json for ${paths.join(', ')}`);
  }
  const { entries, imageJson } = injectAgent(flat.entries, {
    image,
    language: target.language,
    version: target.version,
    arch: target.arch,
    agent,
    agentSha256,
    extraEnv: target.env,
    droppedXattrs: flat.droppedXattrs,
    mtime: addedFilesMtime(image, options.sourceDateEpoch),
  });

  const file = outputFileName(target);
  const uncompressed = new Measure();
  const compressed = new Measure();
  await writeAtomically(join(options.outDir, file), (temporary) =>
    pipeline(
      newcArchive(entries, { clampMtime: options.sourceDateEpoch }),
      uncompressed,
      createCompressor(target.compression, target.level),
      compressed,
      createWriteStream(temporary),
    ),
  );
  options.log.info(`${label}: wrote ${file} (${entries.length} entries, ${uncompressed.bytes} -> ${compressed.bytes} bytes)`);
  return {
    language: target.language,
    version: target.version,
    default: target.isDefault,
    arch: target.arch,
    file,
    sha256: compressed.digestHex(),
    size: compressed.bytes,
    compression: target.compression,
    uncompressedSize: uncompressed.bytes,
    source: {
      reference: image.reference,
      manifestDigest: image.manifestDigest,
      ...(image.indexDigest ? { indexDigest: image.indexDigest } : {}),
      configDigest: image.configDigest,
    },
    agent: { sha256: agentSha256 },
    env: imageJson.env,
  };
}
