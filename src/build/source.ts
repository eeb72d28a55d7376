/** Picks the content store for a reference: an OCI layout (oci:DIR) or a registry. */
import { OCI_LAYOUT_PREFIX, OciLayoutStore, parseOciLayoutReference } from '../image/oci-layout.ts';
import { parseImageReference } from '../image/reference.ts';
import type { ContentStore } from '../image/source.ts';
import { openRegistryStore, type RegistryOptions } from '../registry/store.ts';

export type SourceOptions = Omit<RegistryOptions, 'cacheDir'> & { cacheDir: string };

export async function openContentStore(reference: string, options: SourceOptions): Promise<ContentStore> {
  if (reference.startsWith(OCI_LAYOUT_PREFIX)) return new OciLayoutStore(parseOciLayoutReference(reference));
  return openRegistryStore(parseImageReference(reference), options);
}
