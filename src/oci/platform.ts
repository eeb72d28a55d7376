import { InputError } from '../errors.ts';
import { OCI_ARCH, type Arch } from './content.ts';
import type { Descriptor, Platform } from './types.ts';

const ATTESTATION_REFERENCE_TYPE = 'vnd.docker.reference.type';

/** "linux/arm64/v8" style, for messages. */
export function formatPlatform(platform: Platform | undefined): string {
  if (!platform) return 'unknown';
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
}

/** Entries of an index that are images for a real platform (not attestations). */
export function platformEntries(manifests: readonly Descriptor[]): Descriptor[] {
  return manifests.filter(
    (entry) =>
      entry.platform !== undefined &&
      entry.platform.os !== 'unknown' &&
      entry.platform.architecture !== 'unknown' &&
      entry.annotations?.[ATTESTATION_REFERENCE_TYPE] === undefined,
  );
}

/**
 * Picks the manifest for linux/`arch` from an index, the way containerd does:
 * arm64 prefers variant v8 or none; amd64 prefers no variant (or v1).
 */
export function selectPlatform(manifests: readonly Descriptor[], arch: Arch, reference: string): Descriptor {
  const wanted = OCI_ARCH[arch];
  const candidates = platformEntries(manifests).filter(
    (entry) => entry.platform?.os === 'linux' && entry.platform.architecture === wanted,
  );
  const preferred = candidates.find((entry) => [undefined, '', 'v8', 'v1'].includes(entry.platform?.variant));
  const chosen = preferred ?? candidates[0];
  if (chosen) return chosen;
  const available = platformEntries(manifests).map((entry) => formatPlatform(entry.platform));
  throw new InputError(
    `image ${reference} has no linux/${wanted} (${arch}) image; it has: ${available.join(', ') || 'no platforms'}`,
    { hint: 'pick an arch the image provides with --arch, or another tag' },
  );
}

/** Checks that a single-platform image's config matches the wanted arch. */
export function checkConfigArch(configArch: string | undefined, arch: Arch, reference: string): void {
  if (configArch !== undefined && configArch !== OCI_ARCH[arch]) {
    throw new InputError(
      `image ${reference} is for ${configArch}, not ${OCI_ARCH[arch]} (${arch}); it is not a multi-arch index`,
      { hint: 'use a reference to an image or index that has the wanted arch' },
    );
  }
}
