/**
 * An OCI image layout directory as an image source: `oci:DIR`, `oci:DIR:TAG`
 * or `oci:DIR@sha256:...` (skopeo's syntax).
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { InputError, VerificationError } from '../errors.ts';
import { digestHex, isDigest, sha256Digest } from '../util/digest.ts';
import { isMissingFile, readInputFile, readInputText } from '../util/input-file.ts';
import { checkDocumentSize, DOCUMENT_SIZE_LIMITS, type DocumentKind } from '../oci/limits.ts';
import type { ContentStore } from '../oci/content.ts';
import { checkDescriptors, parseJsonObject } from '../oci/validate.ts';
import type { Descriptor, FetchedManifest, ImageIndex } from '../oci/types.ts';

export const OCI_LAYOUT_PREFIX = 'oci:';
const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export interface OciLayoutReference {
  dir: string;
  tag?: string;
  digest?: string;
}

/** Splits "oci:DIR[:TAG|@DIGEST]"; a colon followed by a slash belongs to DIR. */
export function parseOciLayoutReference(text: string): OciLayoutReference {
  let body = text.slice(OCI_LAYOUT_PREFIX.length);
  let digest: string | undefined;
  const at = body.lastIndexOf('@');
  if (at > 0 && isDigest(body.slice(at + 1))) {
    digest = body.slice(at + 1);
    body = body.slice(0, at);
  }
  const colon = body.lastIndexOf(':');
  const hasTag = colon > 0 && !body.slice(colon + 1).includes('/');
  const dir = hasTag ? body.slice(0, colon) : body;
  if (dir === '') throw new InputError(`image reference "${text}" names no directory (use oci:DIR[:TAG])`);
  return { dir, tag: hasTag ? body.slice(colon + 1) : undefined, digest };
}

export class OciLayoutStore implements ContentStore {
  readonly reference: string;
  private readonly layout: OciLayoutReference;

  constructor(layout: OciLayoutReference) {
    this.layout = { ...layout, dir: resolve(layout.dir) };
    const suffix = `${layout.tag ? `:${layout.tag}` : ''}${layout.digest ? `@${layout.digest}` : ''}`;
    this.reference = `${OCI_LAYOUT_PREFIX}${this.layout.dir}${suffix}`;
  }

  async fetchRootManifest(): Promise<FetchedManifest> {
    return this.fetchManifest(await this.rootDescriptor());
  }

  async fetchManifest(descriptor: Descriptor): Promise<FetchedManifest> {
    const bytes = await this.readDocument(descriptor, 'manifest');
    return { bytes, mediaType: descriptor.mediaType, digest: descriptor.digest };
  }

  fetchBlob(descriptor: Descriptor): Promise<Buffer> {
    return this.readDocument(descriptor, 'config');
  }

  /** A blob read whole, within its kind's size limit, and checked against its digest. */
  private async readDocument(descriptor: Descriptor, kind: DocumentKind): Promise<Buffer> {
    const subject = `blob ${descriptor.digest} in ${this.layout.dir}`;
    checkDocumentSize(descriptor.size, kind, subject);
    const bytes = await readInputFile(this.pathOf(descriptor.digest), subject, DOCUMENT_SIZE_LIMITS[kind]).catch((error: unknown) => {
      throw isMissingFile(error) ? this.missingBlob(descriptor.digest) : error;
    });
    if (sha256Digest(bytes) !== descriptor.digest) {
      throw new VerificationError(`blob ${descriptor.digest} in ${this.layout.dir} does not match its digest`, {
        hint: 'the layout is corrupt: export the image again',
      });
    }
    if (bytes.length !== descriptor.size) {
      throw new VerificationError(`blob ${descriptor.digest} in ${this.layout.dir} is ${bytes.length} bytes, its descriptor says ${descriptor.size}`, {
        hint: 'the layout is corrupt: export the image again',
      });
    }
    return bytes;
  }

  async blobPath(descriptor: Descriptor): Promise<string> {
    const path = this.pathOf(descriptor.digest);
    const size = await stat(path).then(
      (info) => info.size,
      () => undefined,
    );
    if (size === undefined) throw this.missingBlob(descriptor.digest);
    if (size !== descriptor.size) {
      throw new VerificationError(`blob ${descriptor.digest} in ${this.layout.dir} is ${size} bytes, its descriptor says ${descriptor.size}`);
    }
    return path;
  }

  private pathOf(digest: string): string {
    return join(this.layout.dir, 'blobs', 'sha256', digestHex(digest, `blob digest in ${this.layout.dir}`));
  }

  private missingBlob(digest: string): InputError {
    return new InputError(`OCI layout ${this.layout.dir} lacks blob ${digest}`, { hint: 'the layout is incomplete: export the image again' });
  }

  private async readIndex(): Promise<ImageIndex> {
    const path = join(this.layout.dir, 'index.json');
    const text = await readInputText(path, 'OCI layout index', DOCUMENT_SIZE_LIMITS.manifest).catch((error: unknown) => {
      if (!isMissingFile(error)) throw error;
      throw new InputError(`${this.layout.dir} is not an OCI image layout: cannot read ${path}`, {
        hint: 'export an image with `skopeo copy docker://IMAGE oci:DIR:TAG`',
      });
    });
    return parseLayoutIndex(text, path);
  }

  /** The index.json entry the reference names: by digest, by tag, or the only one. */
  private async rootDescriptor(): Promise<Descriptor> {
    const { dir } = this.layout;
    return selectLayoutEntry(await this.readIndex(), this.layout, `OCI layout ${dir}`, (tag) => `${OCI_LAYOUT_PREFIX}${dir}:${tag}`);
  }
}

/** Parses an OCI layout's index.json (`path` names it in errors). */
export function parseLayoutIndex(text: string, path: string): ImageIndex {
  const index = parseJsonObject<ImageIndex>(text, `OCI index ${path}`);
  checkDescriptors(index.manifests, `OCI index ${path}: manifests`);
  return index;
}

/**
 * The index.json entry a reference names: by digest, by tag, or the only one.
 * `layout` names the layout in errors; `referenceFor` spells a reference to one of its tags.
 */
export function selectLayoutEntry(
  { manifests }: ImageIndex,
  { tag, digest }: { tag?: string; digest?: string },
  layout: string,
  referenceFor: (tag: string) => string,
): Descriptor {
  const matches = digest
    ? manifests.filter((entry) => entry.digest === digest)
    : tag
      ? manifests.filter((entry) => entry.annotations?.[REF_NAME_ANNOTATION] === tag)
      : manifests;
  if (matches.length === 1) return matches[0]!;
  const tags = manifests.map((entry) => entry.annotations?.[REF_NAME_ANNOTATION]).filter((name) => name !== undefined);
  if (matches.length === 0) {
    throw new InputError(`${layout} has no image ${tag ? `tagged "${tag}"` : digest}; tags: ${tags.join(', ') || 'none'}`);
  }
  throw new InputError(`${layout} holds ${matches.length} images; name one: ${tags.map(referenceFor).join(', ')}`);
}
