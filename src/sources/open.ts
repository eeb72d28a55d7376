/**
 * Picks the content store for a reference: an OCI layout (oci:DIR), an image
 * archive (oci-archive:FILE, docker-archive:FILE), or a registry, through its
 * mirrors when it has any.
 */
import { isArchiveReference, openArchiveStore, parseArchiveReference } from './archive.ts';
import { OCI_LAYOUT_PREFIX, OciLayoutStore, parseOciLayoutReference } from './oci-layout.ts';
import { parseImageReference } from '../oci/reference.ts';
import type { ContentStore } from '../oci/content.ts';
import { openMirroredStore, type RegistryMirrors } from '../registry/mirrors.ts';
import { openRegistryStore, type RegistryOptions } from '../registry/store.ts';

export type SourceOptions = RegistryOptions & {
  /** Mirrors to try before a registry, by registry name. */
  mirrors?: RegistryMirrors;
};

/** Whether a reference names local files rather than a registry image. */
export function isLocalSource(reference: string): boolean {
  return reference.startsWith(OCI_LAYOUT_PREFIX) || isArchiveReference(reference);
}

export async function openContentStore(reference: string, options: SourceOptions): Promise<ContentStore> {
  if (reference.startsWith(OCI_LAYOUT_PREFIX)) return new OciLayoutStore(parseOciLayoutReference(reference));
  if (isArchiveReference(reference)) return openArchiveStore(parseArchiveReference(reference), options.cache);
  const image = parseImageReference(reference);
  const mirrors = options.mirrors?.get(image.registry) ?? [];
  return mirrors.length > 0 ? openMirroredStore(image, mirrors, options) : openRegistryStore(image, options);
}
