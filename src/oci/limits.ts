/**
 * Size limits of the documents an image source hands over whole (manifests,
 * indexes, configs), the same whatever the source: a registry, an OCI layout
 * or an image archive. A document is parsed in memory, so an image must not
 * make rampack buffer gigabytes; containerd uses the same limits.
 */
import { InputError } from '../errors.ts';
import { formatBytes } from '../util/log.ts';

const MiB = 1024 * 1024;

export const DOCUMENT_SIZE_LIMITS = {
  /** Image manifests and indexes (index.json, docker-archive's manifest.json). */
  manifest: 4 * MiB,
  /** Image configs. */
  config: 16 * MiB,
} as const;

export type DocumentKind = keyof typeof DOCUMENT_SIZE_LIMITS;

const KIND_NAMES: Record<DocumentKind, string> = { manifest: 'a manifest or index', config: 'an image config' };

/** Refuses a document of `size` bytes over its kind's limit; `subject` names it ("config sha256:... of image X"). */
export function checkDocumentSize(size: number, kind: DocumentKind, subject: string): void {
  const limit = DOCUMENT_SIZE_LIMITS[kind];
  if (size > limit) {
    throw new InputError(`${subject} is ${size} bytes, too large for ${KIND_NAMES[kind]} (limit ${formatBytes(limit)})`, {
      hint: 'this is not an image rampack can build; check the reference',
    });
  }
}
