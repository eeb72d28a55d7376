/**
 * Agents published as images: `agent: {image: REF, path: /agent}`. The image
 * is resolved for the target's arch (a multi-arch index gives each arch its
 * binary), its layers are verified, unpacked and flattened like any image,
 * and the file at `path` is stored in the blob cache under its sha256, where
 * the build reads it like an agent given as a file.
 */
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { InputError } from '../errors.ts';
import type { Arch } from '../oci/content.ts';
import { unpackImageLayers } from '../layers/unpack.ts';
import { BlobCache } from '../registry/cache.ts';
import { bytePath, rangePieces, type FileRange, type TreeEntry } from '../tree/entry.ts';
import { sha256Digest } from '../util/digest.ts';
import { flattenImage, openImage } from '../pipeline/image.ts';
import type { BuildTarget } from '../pipeline/target.ts';
import type { SourceOptions } from '../sources/open.ts';

async function readRange(range: FileRange): Promise<Buffer> {
  const handle = await open(range.file);
  try {
    const buffer = Buffer.alloc(range.size); // holes of a sparse file stay zero
    let at = 0;
    for (const piece of rangePieces(range, 0, range.size)) {
      if ('position' in piece) {
        const { bytesRead } = await handle.read(buffer, at, piece.length, piece.position);
        if (bytesRead !== piece.length) throw new InputError(`layer cache file ${range.file} is shorter than its index says`, { hint: 'remove the cache directory and build again' });
        at += piece.length;
      } else {
        at += piece.zeros;
      }
    }
    return buffer;
  } finally {
    await handle.close();
  }
}

async function imageFile(reference: string, path: string, arch: Arch, options: SourceOptions): Promise<TreeEntry | undefined> {
  const { store, image } = await openImage(reference, arch, options);
  const layers = await unpackImageLayers(image.layers, image.config.rootfs.diff_ids, (descriptor) => store.blobPath(descriptor), options.cache);
  const wanted = bytePath(path.replace(/^\/+/, ''));
  return flattenImage(layers, image).entries.find((entry) => entry.path === wanted);
}

/** The agent binary `path` of image `reference` for `arch`, as a file in the blob cache. */
export async function pullAgentImage(reference: string, path: string, arch: Arch, options: SourceOptions): Promise<string> {
  const entry = await imageFile(reference, path, arch, options);
  if (entry?.type !== 'file' || entry.data === undefined) {
    const found = entry === undefined ? 'has no' : `has a ${entry.type} at`;
    throw new InputError(`agent image ${reference} (${arch}) ${found} ${path}`, {
      hint: entry?.type === 'symlink' ? `point path at the file itself (${entry.linkTarget})` : 'set agent.path to where the image keeps the binary',
    });
  }
  const bytes = Buffer.isBuffer(entry.data) ? entry.data : await readRange(entry.data);
  return new BlobCache(options.cache).ingest(sha256Digest(bytes), bytes.length, Readable.from([bytes]));
}

/** The target with an agent image replaced by the pulled file; targets with an agent file pass unchanged. */
export async function withPulledAgent(target: BuildTarget, options: SourceOptions): Promise<BuildTarget> {
  if (target.agent !== undefined || target.agentImage === undefined) return target;
  const { reference, path } = target.agentImage;
  return { ...target, agent: await pullAgentImage(reference, path, target.arch, options) };
}
