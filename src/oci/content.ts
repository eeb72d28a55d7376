import type { Descriptor, FetchedManifest, ImageConfig, ImageManifest } from './types.ts';

/** Architectures as rampack names them (the kernel's names), and OCI's names for them. */
export type Arch = 'x86_64' | 'aarch64';
export const ARCHES: readonly Arch[] = ['x86_64', 'aarch64'];
export const OCI_ARCH: Record<Arch, string> = { x86_64: 'amd64', aarch64: 'arm64' };

/** One platform's image, resolved: its manifest and config read and verified. */
export interface ResolvedImage {
  /** Canonical form, e.g. "docker.io/library/golang:1.23" or "oci:/path:tag". */
  readonly reference: string;
  /** Digest of the platform manifest that was picked. */
  readonly manifestDigest: string;
  /** Digest of the index the manifest was picked from, when there was one. */
  readonly indexDigest?: string;
  readonly manifest: ImageManifest;
  readonly configDigest: string;
  readonly config: ImageConfig;
  /** Layers bottom to top (manifest order). */
  readonly layers: readonly Descriptor[];
}

/**
 * Where an image's documents and blobs come from: a registry repository or an
 * OCI layout directory. Every method verifies what it returns against the
 * digest it was asked for, except `blobPath`, whose (large) contents the layer
 * stage hashes while it reads them.
 */
export interface ContentStore {
  /** Canonical reference, for messages and the manifest. */
  readonly reference: string;
  /** The manifest or index the reference names (by tag or by digest). */
  fetchRootManifest(): Promise<FetchedManifest>;
  /** A manifest named by a descriptor of an index. */
  fetchManifest(descriptor: Descriptor): Promise<FetchedManifest>;
  /** A small blob (an image config) read whole. */
  fetchBlob(descriptor: Descriptor): Promise<Buffer>;
  /** A local file holding the blob (downloaded into the cache for registries). */
  blobPath(descriptor: Descriptor): Promise<string>;
  /**
   * Stores that download blobs: the blob as it downloads, so that a layer
   * unpacks while it arrives. Others have their files at hand: use blobPath.
   */
  incomingBlob?(descriptor: Descriptor): IncomingBlob;
}

/** A blob on its way into a local file, readable before it gets there. */
export interface IncomingBlob {
  /** The complete, verified file (blobPath's); rejects when the blob cannot be had. */
  readonly path: Promise<string>;
  /**
   * The blob's bytes from offset 0 as they arrive, ending only once the whole
   * blob is verified against its digest. Throws DownloadRestartedError when
   * the download starts over after bytes were read: read `path` then.
   */
  follow(): AsyncIterable<Buffer>;
}
