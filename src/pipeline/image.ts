/**
 * The first stages of every build, shared by the image build (build.ts) and
 * agents published as images (src/recipe/agent-image.ts): a reference opened
 * as a content store and resolved for one arch; layers flattened with errors
 * that name the image.
 */
import { InputError } from '../errors.ts';
import { flattenLayers, type FlattenResult } from '../layers/flatten.ts';
import type { UnpackedLayer } from '../layers/unpack.ts';
import type { Arch, ContentStore, ResolvedImage } from '../oci/content.ts';
import { resolveImage } from '../oci/resolve.ts';
import { openContentStore, type SourceOptions } from '../sources/open.ts';

/** The store `reference` names, and its image for `arch` (manifest and config verified). */
export async function openImage(reference: string, arch: Arch, options: SourceOptions): Promise<{ store: ContentStore; image: ResolvedImage }> {
  const store = await openContentStore(reference, options);
  return { store, image: await resolveImage(store, arch) };
}

/** The image's layers flattened; a refused layer is named with its image, as a digest alone says little. */
export function flattenImage(layers: UnpackedLayer[], image: ResolvedImage): FlattenResult {
  try {
    return flattenLayers(layers);
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    throw new InputError(`image ${image.reference}: ${error.message}`, { hint: error.hint, cause: error });
  }
}
