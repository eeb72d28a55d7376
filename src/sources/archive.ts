/**
 * Image archives as sources, in skopeo's syntax: `oci-archive:FILE[:TAG]` (a
 * tar of an OCI layout) and `docker-archive:FILE[:REF]` (`docker save`
 * output). The archive is indexed once, without extracting it; documents are
 * read by byte range and layers are copied by byte range into the blob cache,
 * which verifies them, because the layer stage reads blobs from files.
 *
 * A docker archive has no image manifest: rampack synthesizes an OCI manifest
 * from manifest.json, whose digest therefore names nothing outside rampack;
 * the config digest is what identifies the image across formats.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { posix, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { detectCompression, type Compression } from '../compress/index.ts';
import { InputError, VerificationError } from '../errors.ts';
import { normalizeLayerPath, TarIndexer, type LayerEntry } from '../tar/tar-index.ts';
import type { Cache } from '../cache/cache.ts';
import { BlobCache } from '../registry/cache.ts';
import { digestHex, sha256Digest } from '../util/digest.ts';
import { openInputFile } from '../util/input-file.ts';
import { checkDocumentSize, type DocumentKind } from '../oci/limits.ts';
import { parseLayoutIndex, selectLayoutEntry } from './oci-layout.ts';
import { parseImageReference } from '../oci/reference.ts';
import type { ContentStore } from '../oci/content.ts';
import { MediaType, type Descriptor, type FetchedManifest, type ImageConfig, type ImageManifest } from '../oci/types.ts';
import { OncePerKey } from '../util/once.ts';

export const OCI_ARCHIVE_PREFIX = 'oci-archive:';
export const DOCKER_ARCHIVE_PREFIX = 'docker-archive:';

/** Docker's legacy layout links duplicate layers to one another; bound the chain. */
const MAX_LINK_HOPS = 8;
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const LAYER_MEDIA_TYPES: Record<Compression, string> = {
  none: MediaType.ociLayer,
  gzip: MediaType.ociLayerGzip,
  zstd: MediaType.ociLayerZstd,
};

export interface ArchiveReference {
  kind: 'oci-archive' | 'docker-archive';
  /** Absolute path of the tar file. */
  file: string;
  /** oci-archive: the tag (ref.name in index.json); docker-archive: an image name from RepoTags. */
  name?: string;
}

export function isArchiveReference(text: string): boolean {
  return text.startsWith(OCI_ARCHIVE_PREFIX) || text.startsWith(DOCKER_ARCHIVE_PREFIX);
}

/** Splits "KIND:FILE[:NAME]" at the first colon after the kind, as skopeo does (so FILE cannot hold a colon). */
export function parseArchiveReference(text: string): ArchiveReference {
  const kind = text.startsWith(OCI_ARCHIVE_PREFIX) ? 'oci-archive' : 'docker-archive';
  const body = text.slice(kind.length + 1);
  const colon = body.indexOf(':');
  const file = colon < 0 ? body : body.slice(0, colon);
  const name = colon < 0 ? undefined : body.slice(colon + 1);
  if (file === '' || name === '') {
    throw new InputError(`image reference "${text}" is incomplete`, {
      hint: `write ${kind}:FILE or ${kind}:FILE:${kind === 'oci-archive' ? 'TAG' : 'NAME:TAG'} (FILE cannot contain ":")`,
    });
  }
  return { kind, file: resolve(file), name };
}

function archiveReferenceText({ kind, file, name }: ArchiveReference): string {
  return `${kind}:${file}${name === undefined ? '' : `:${name}`}`;
}

/** A tar file indexed once: its members are read and streamed by byte range. */
class TarArchive {
  readonly file: string;
  private readonly members: ReadonlyMap<string, LayerEntry>;

  private constructor(file: string, entries: readonly LayerEntry[]) {
    this.file = file;
    // A later member of the same name replaces an earlier one, as tar extraction does.
    this.members = new Map(entries.map((entry) => [entry.path, entry]));
  }

  /** Indexes the archive's members, reading no further than its size when opened (it must be a regular file). */
  static async open(file: string): Promise<TarArchive> {
    const { handle, size } = await openInputFile(file, 'image archive');
    try {
      await TarArchive.refuseCompressed(handle, file);
      const indexer = new TarIndexer(`archive ${file}`);
      for await (const chunk of handle.createReadStream({ start: 0, end: Math.max(size - 1, 0), autoClose: false }) as AsyncIterable<Buffer>) {
        indexer.write(chunk);
        if (indexer.done) break;
      }
      return new TarArchive(file, indexer.end());
    } finally {
      await handle.close();
    }
  }

  /** `docker save | gzip` is common; say what to do instead of failing on a tar checksum. */
  private static async refuseCompressed(handle: FileHandle, file: string): Promise<void> {
    const { buffer } = await handle.read(Buffer.alloc(GZIP_MAGIC.length), 0, GZIP_MAGIC.length, 0);
    if (buffer.equals(GZIP_MAGIC)) {
      throw new InputError(`image archive ${file} is gzip-compressed`, { hint: `decompress it first: gunzip -k ${file}` });
    }
  }

  /** The regular file at `path`, following symbolic and hard links inside the archive. */
  member(path: string, what: string): LayerEntry {
    let current = normalizeLayerPath(path);
    for (let hop = 0; hop <= MAX_LINK_HOPS && current !== undefined; hop++) {
      const entry = this.members.get(current);
      if (entry?.type === 'file' && entry.sparse !== undefined) {
        // Members are read as byte ranges of the archive; a blob has no holes worth a sparse map.
        throw new InputError(`image archive ${this.file} stores ${what} (${path}) as a sparse file`, {
          hint: 'export the archive again without tar --sparse',
        });
      }
      if (entry?.type === 'file') return entry;
      if (entry?.type === 'hardlink') current = entry.linkname;
      else if (entry?.type === 'symlink') current = normalizeLayerPath(posix.join(posix.dirname(entry.path), entry.linkname!));
      else break;
    }
    throw new InputError(`image archive ${this.file} lacks ${what} (${path})`, {
      hint: 'the archive is incomplete or damaged; export the image again',
    });
  }

  stream(entry: LayerEntry): Readable {
    if (entry.size === 0) return Readable.from([]);
    return createReadStream(this.file, { start: entry.dataOffset, end: entry.dataOffset + entry.size - 1 });
  }

  /** A document member read whole, within its kind's size limit. */
  async read(entry: LayerEntry, what: string, kind: DocumentKind): Promise<Buffer> {
    checkDocumentSize(entry.size, kind, `${what} in image archive ${this.file}`);
    const chunks: Buffer[] = [];
    for await (const chunk of this.stream(entry) as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  async digest(entry: LayerEntry): Promise<string> {
    const hash = createHash('sha256');
    for await (const chunk of this.stream(entry) as AsyncIterable<Buffer>) hash.update(chunk);
    return `sha256:${hash.digest('hex')}`;
  }

  async compression(entry: LayerEntry): Promise<Compression> {
    const handle = await open(this.file, 'r');
    try {
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(4), 0, Math.min(4, entry.size), entry.dataOffset);
      return detectCompression(buffer.subarray(0, bytesRead));
    } finally {
      await handle.close();
    }
  }
}

/**
 * What both archive kinds share: blobs are archive members, found by digest,
 * read verified, and copied into the blob cache once per digest.
 */
abstract class ArchiveStore implements ContentStore {
  readonly reference: string;
  protected readonly archive: TarArchive;
  private readonly cache: BlobCache;
  private readonly copies = new OncePerKey<string>();

  protected constructor(reference: ArchiveReference, archive: TarArchive, cache: BlobCache) {
    this.reference = archiveReferenceText(reference);
    this.archive = archive;
    this.cache = cache;
  }

  abstract fetchRootManifest(): Promise<FetchedManifest>;

  /** The archive member holding a blob. */
  protected abstract memberOf(descriptor: Descriptor): LayerEntry;

  async fetchManifest(descriptor: Descriptor): Promise<FetchedManifest> {
    return { bytes: await this.readDocument(descriptor, 'manifest'), mediaType: descriptor.mediaType, digest: descriptor.digest };
  }

  fetchBlob(descriptor: Descriptor): Promise<Buffer> {
    return this.readDocument(descriptor, 'config');
  }

  private async readDocument(descriptor: Descriptor, kind: DocumentKind): Promise<Buffer> {
    const what = `blob ${descriptor.digest}`;
    checkDocumentSize(descriptor.size, kind, `${what} in image archive ${this.archive.file}`);
    const bytes = await this.archive.read(this.memberOf(descriptor), what, kind);
    const actual = sha256Digest(bytes);
    if (actual !== descriptor.digest || bytes.length !== descriptor.size) {
      throw this.damaged(`${what} has digest ${actual} (${bytes.length} bytes), its descriptor says ${descriptor.digest} (${descriptor.size} bytes)`);
    }
    return bytes;
  }

  blobPath(descriptor: Descriptor): Promise<string> {
    return this.copies.run(descriptor.digest, () => this.copyToCache(descriptor));
  }

  private async copyToCache(descriptor: Descriptor): Promise<string> {
    const { digest, size } = descriptor;
    const member = this.memberOf(descriptor);
    if (await this.cache.has(digest, size)) return this.cache.path(digest);
    try {
      return await this.cache.ingest(digest, size, this.archive.stream(member));
    } catch (error) {
      if (error instanceof VerificationError) throw this.damaged(`${member.path}: ${error.message}`);
      throw error;
    }
  }

  protected damaged(problem: string): VerificationError {
    return new VerificationError(`image archive ${this.archive.file}: ${problem}`, {
      hint: 'the archive is damaged or its manifest does not match its contents; export the image again',
    });
  }
}

/** `oci-archive:FILE[:TAG]`: an OCI layout inside a tar, as `skopeo copy ... oci-archive:FILE:TAG` writes it. */
class OciArchiveStore extends ArchiveStore {
  private readonly tag?: string;

  constructor(reference: ArchiveReference, archive: TarArchive, cache: BlobCache) {
    super(reference, archive, cache);
    this.tag = reference.name;
  }

  async fetchRootManifest(): Promise<FetchedManifest> {
    const { file } = this.archive;
    const member = this.archive.member('index.json', 'the OCI layout index (is it a docker-archive?)');
    const index = parseLayoutIndex((await this.archive.read(member, 'index.json', 'manifest')).toString('utf8'), `index.json of image archive ${file}`);
    const entry = selectLayoutEntry(index, { tag: this.tag }, `OCI archive ${file}`, (tag) => `${OCI_ARCHIVE_PREFIX}${file}:${tag}`);
    return this.fetchManifest(entry);
  }

  protected memberOf({ digest }: Descriptor): LayerEntry {
    return this.archive.member(`blobs/sha256/${digestHex(digest, `blob digest in ${this.archive.file}`)}`, `blob ${digest}`);
  }
}

/** One image of a docker archive's manifest.json. */
interface DockerArchiveImage {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** `docker-archive:FILE[:REF]`: `docker save` (or `skopeo copy ... docker-archive:`) output. */
class DockerArchiveStore extends ArchiveStore {
  private readonly manifest: FetchedManifest;
  /** Config and layers by digest. */
  private readonly blobs: ReadonlyMap<string, LayerEntry>;

  private constructor(reference: ArchiveReference, archive: TarArchive, cache: BlobCache, manifest: FetchedManifest, blobs: Map<string, LayerEntry>) {
    super(reference, archive, cache);
    this.manifest = manifest;
    this.blobs = blobs;
  }

  /** Reads manifest.json and the config, digests the layers, and synthesizes the image manifest. */
  static async open(reference: ArchiveReference, archive: TarArchive, cache: BlobCache): Promise<DockerArchiveStore> {
    const image = await DockerArchiveStore.selectImage(reference, archive);
    const configMember = archive.member(image.Config, 'the image config');
    const configBytes = await archive.read(configMember, 'the image config', 'config');
    const config: Descriptor = { mediaType: MediaType.ociConfig, digest: sha256Digest(configBytes), size: configBytes.length };
    const blobs = new Map([[config.digest, configMember]]);
    const diffIds = DockerArchiveStore.diffIds(configBytes, image, archive.file);
    const layers: Descriptor[] = [];
    for (const [index, path] of image.Layers.entries()) {
      const member = archive.member(path, `layer ${index + 1}`);
      const compression = await archive.compression(member);
      // An uncompressed layer's digest is its diff_id; extraction and unpacking verify it.
      const digest = compression === 'none' ? diffIds[index]! : await archive.digest(member);
      layers.push({ mediaType: LAYER_MEDIA_TYPES[compression], digest, size: member.size });
      blobs.set(digest, member);
    }
    const document: ImageManifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers };
    const bytes = Buffer.from(JSON.stringify(document));
    return new DockerArchiveStore(reference, archive, cache, { bytes, mediaType: MediaType.ociManifest, digest: sha256Digest(bytes) }, blobs);
  }

  private static async selectImage({ name }: ArchiveReference, archive: TarArchive): Promise<DockerArchiveImage> {
    const where = `manifest.json of image archive ${archive.file}`;
    const member = archive.member('manifest.json', 'manifest.json (is it an oci-archive?)');
    let images: DockerArchiveImage[];
    try {
      images = JSON.parse((await archive.read(member, 'manifest.json', 'manifest')).toString('utf8')) as DockerArchiveImage[];
    } catch (error) {
      throw new InputError(`${where} is not valid JSON: ${(error as Error).message}`);
    }
    if (!Array.isArray(images) || images.some((image) => typeof image?.Config !== 'string' || !Array.isArray(image.Layers))) {
      throw new InputError(`${where} is not a list of {Config, RepoTags, Layers}`, { hint: 'export the image again with docker save' });
    }
    const wanted = name === undefined ? undefined : parseImageReference(name).toString();
    const matches = wanted === undefined ? images : images.filter((image) => canonicalTags(image).includes(wanted));
    if (matches.length === 1) return matches[0]!;
    const tags = images.flatMap(canonicalTags);
    const named = tags.map((tag) => `${DOCKER_ARCHIVE_PREFIX}${archive.file}:${tag}`).join(', ') || 'none';
    if (matches.length === 0) throw new InputError(`image archive ${archive.file} holds no image named ${wanted ?? ''}; it holds ${named}`);
    throw new InputError(`image archive ${archive.file} holds ${matches.length} images; name one: ${named}`);
  }

  private static diffIds(configBytes: Buffer, image: DockerArchiveImage, file: string): string[] {
    let config: ImageConfig;
    try {
      config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
    } catch (error) {
      throw new InputError(`config ${image.Config} in image archive ${file} is not valid JSON: ${(error as Error).message}`);
    }
    const diffIds = config.rootfs?.diff_ids;
    if (!Array.isArray(diffIds) || diffIds.length !== image.Layers.length) {
      throw new InputError(
        `config ${image.Config} in image archive ${file} lists ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${image.Layers.length} layers`,
      );
    }
    return diffIds;
  }

  async fetchRootManifest(): Promise<FetchedManifest> {
    return this.manifest;
  }

  protected memberOf({ digest }: Descriptor): LayerEntry {
    const member = this.blobs.get(digest);
    if (!member) throw new InputError(`image archive ${this.archive.file} holds no blob ${digest}`);
    return member;
  }
}

/** RepoTags as canonical references ("busybox:1" -> "docker.io/library/busybox:1"); unparsable ones are left out. */
function canonicalTags(image: DockerArchiveImage): string[] {
  return (image.RepoTags ?? []).flatMap((tag) => {
    try {
      return [parseImageReference(tag).toString()];
    } catch {
      return [];
    }
  });
}

/** Opens an image archive, caching its blobs in `cache`. */
export async function openArchiveStore(reference: ArchiveReference, cache: Cache): Promise<ContentStore> {
  const archive = await TarArchive.open(reference.file);
  const blobs = new BlobCache(cache);
  return reference.kind === 'oci-archive' ? new OciArchiveStore(reference, archive, blobs) : DockerArchiveStore.open(reference, archive, blobs);
}
