/**
 * Pushing to a registry: blobs (skipped when the repository has them, mounted
 * from another repository of the registry when it allows, else uploaded in one
 * PUT or in PATCH chunks) and manifests, through the registry client's
 * authorization (a push gets its `pull,push` token from the registry's
 * challenge) and its retry policy.
 *
 * Upload URLs are used exactly as the registry gives them in `Location`
 * (relative or absolute, with whatever query parameters it carries), and each
 * step continues at the newest one.
 */
import { open, stat } from 'node:fs/promises';
import { RegistryError, VerificationError } from '../errors.ts';
import type { ImageReference } from '../oci/reference.ts';
import type { ContentStore } from '../oci/content.ts';
import { MediaType, type Descriptor, type ImageIndex, type ImageManifest } from '../oci/types.ts';
import { digestHex, sha256Digest } from '../util/digest.ts';
import { discardBody } from './body.ts';
import { readBody, RegistryClient } from './client.ts';
import { withRetries, type RetryPolicy } from './retry.ts';
import type { HttpResponse } from './transport.ts';
import { registryClientOptions, type RegistryOptions } from './store.ts';

export interface PushOptions extends Omit<RegistryOptions, 'cache' | 'onBlobBytes'> {
  /** Blobs larger than this go up in PATCH requests of this size (default 16 MiB). */
  chunkSize?: number;
}

/** A blob's bytes: a file, or (for documents) a buffer. */
export type BlobContent = { path: string } | { bytes: Buffer };

/** What pushing a blob took: nothing, a cross-repository mount, or an upload. */
export type BlobPushResult = 'present' | 'mounted' | 'uploaded';

const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024;
/** Largest manifest or document blob read back from the repository. */
const MANIFEST_SIZE_LIMIT = 4 * 1024 * 1024;
const OCTET_STREAM = 'application/octet-stream';
/** A redirect to storage answers a HEAD for a blob the registry has. */
const BLOB_PRESENT_STATUSES = [200, 301, 302, 303, 307, 308];
const INDEX_TYPES = new Set<string>([MediaType.ociIndex, MediaType.dockerManifestList]);
/** Resolves relative upload locations; never sent anywhere. */
const RELATIVE_BASE = 'http://relative.invalid';

/** The upload URL to continue at: `Location` resolved against the previous one, kept relative if it was. */
function nextLocation(response: HttpResponse, previous: string, what: string): string {
  const location = response.headers.get('location');
  if (!location) throw new RegistryError(`${what}: the registry answered HTTP ${response.status} without a Location for the upload`);
  const next = new URL(location, new URL(previous, RELATIVE_BASE));
  return next.origin === RELATIVE_BASE ? `${next.pathname}${next.search}` : next.href;
}

function withDigest(location: string, digest: string): string {
  return `${location}${location.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

/** A registry that reports a different digest for what it stored has stored something else. */
function checkStoredDigest(response: HttpResponse, digest: string, what: string): void {
  const stored = response.headers.get('docker-content-digest');
  if (stored !== null && stored !== digest) {
    throw new RegistryError(`${what}: the registry stored digest ${stored}, expected ${digest}`, {
      hint: 'the registry altered the content; report it to the registry operator',
    });
  }
}

/** Reads `length` bytes at `offset` of a blob's content. */
async function readSlice(content: BlobContent, offset: number, length: number): Promise<Buffer> {
  if ('bytes' in content) return content.bytes.subarray(offset, offset + length);
  const file = await open(content.path, 'r');
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(length), 0, length, offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

async function contentSize(content: BlobContent): Promise<number> {
  return 'bytes' in content ? content.bytes.length : (await stat(content.path)).size;
}

export class RegistryPusher {
  /** The repository pushed to (its tag, if any, is ignored: manifests name their own). */
  readonly target: ImageReference;
  private readonly client: RegistryClient;
  private readonly retry: RetryPolicy;
  private readonly chunkSize: number;

  constructor(target: ImageReference, client: RegistryClient, retry: RetryPolicy, chunkSize = DEFAULT_CHUNK_SIZE) {
    this.target = target;
    this.client = client;
    this.retry = retry;
    this.chunkSize = chunkSize;
  }

  /**
   * Makes the repository hold the blob. `mountFrom` names another repository
   * of the same registry that has it, to mount it from instead of uploading.
   */
  async pushBlob(descriptor: Descriptor, content: BlobContent, options: { mountFrom?: string } = {}): Promise<BlobPushResult> {
    const what = `pushing blob ${descriptor.digest} to ${this.target.registry}/${this.target.repository}`;
    digestHex(descriptor.digest, what);
    const size = await contentSize(content);
    if (size !== descriptor.size) throw new RegistryError(`${what}: the content is ${size} bytes, its descriptor says ${descriptor.size}`);
    if (await this.hasBlob(descriptor, what)) return 'present';
    // A broken upload session cannot be trusted to resume: a retry starts a new one.
    return this.retrying(what, async () => {
      const mountFrom = options.mountFrom !== this.target.repository ? options.mountFrom : undefined;
      const started = await this.startUpload(descriptor, mountFrom, what);
      if (started.status === 201) return 'mounted';
      const location = nextLocation(started, this.uploadsPath(), what);
      await (size > this.chunkSize ? this.uploadChunked(descriptor, content, location, what) : this.uploadWhole(descriptor, content, location, what));
      return 'uploaded';
    });
  }

  /** PUTs a manifest or index under `reference` (a tag or its digest); returns its digest. */
  async pushManifest(reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    const digest = sha256Digest(bytes);
    const what = `pushing manifest ${digest} to ${this.target.registry}/${this.target.repository}:${reference}`;
    return this.retrying(what, async () => {
      const response = await this.client.exchange({
        method: 'PUT',
        path: `/v2/${this.target.repository}/manifests/${reference}`,
        headers: () => ({ 'content-type': mediaType, 'content-length': String(bytes.length) }),
        body: bytes,
        expect: [201],
        what,
        subject: `repository ${this.target.repository}`,
      });
      discardBody(response);
      checkStoredDigest(response, digest, what);
      return digest;
    });
  }

  /** The manifest a tag (or digest) names in the repository, or undefined when there is none yet: what a push is about to replace. */
  async fetchManifest(reference: string, mediaType: string): Promise<Buffer | undefined> {
    const what = `fetching manifest ${this.target.registry}/${this.target.repository}:${reference}`;
    return this.retrying(what, async () => {
      const response = await this.client.exchange({
        method: 'GET',
        path: `/v2/${this.target.repository}/manifests/${reference}`,
        headers: () => ({ accept: mediaType }),
        expect: [200, 404],
        what,
        subject: `manifest ${reference}`,
      });
      if (response.status === 404) {
        void response.body?.cancel();
        return undefined;
      }
      return readBody(response, MANIFEST_SIZE_LIMIT, what);
    });
  }

  /** A small blob of the repository (a document such as a JSON layer), checked against its descriptor. */
  async fetchDocument(descriptor: Descriptor): Promise<Buffer> {
    const subject = `blob ${descriptor.digest} of ${this.target.registry}/${this.target.repository}`;
    digestHex(descriptor.digest, subject);
    if (descriptor.size > MANIFEST_SIZE_LIMIT) throw new RegistryError(`${subject} is ${descriptor.size} bytes, too large for a document (limit ${MANIFEST_SIZE_LIMIT})`);
    const request = { path: `/v2/${this.target.repository}/blobs/${descriptor.digest}`, what: `fetching ${subject}`, subject };
    const bytes = await this.client.get(request, (response) => readBody(response, descriptor.size, subject));
    if (sha256Digest(bytes) !== descriptor.digest) throw new VerificationError(`${subject}: the registry sent content with digest ${sha256Digest(bytes)}`);
    return bytes;
  }

  private retrying<T>(what: string, operation: () => Promise<T>): Promise<T> {
    return withRetries(this.retry, { what, hint: `check that ${this.target.registry} is reachable and retry` }, operation);
  }

  private uploadsPath(): string {
    return `/v2/${this.target.repository}/blobs/uploads/`;
  }

  private async hasBlob({ digest }: Descriptor, what: string): Promise<boolean> {
    const response = await this.retrying(what, () =>
      this.client.exchange({
        method: 'HEAD',
        path: `/v2/${this.target.repository}/blobs/${digest}`,
        expect: [...BLOB_PRESENT_STATUSES, 404],
        what,
        subject: `blob ${digest}`,
      }),
    );
    return response.status !== 404;
  }

  /** POST to the uploads endpoint: 201 when a mount succeeded, else 202 with the upload's Location. */
  private async startUpload({ digest }: Descriptor, mountFrom: string | undefined, what: string): Promise<HttpResponse> {
    const mount = mountFrom === undefined ? '' : `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(mountFrom)}`;
    const response = await this.client.exchange({
      method: 'POST',
      path: `${this.uploadsPath()}${mount}`,
      headers: () => ({ 'content-length': '0' }),
      expect: [201, 202],
      what,
      subject: `repository ${this.target.repository}`,
    });
    discardBody(response);
    return response;
  }

  /** The whole blob in the closing PUT. */
  private async uploadWhole({ digest, size }: Descriptor, content: BlobContent, location: string, what: string): Promise<void> {
    await this.finishUpload(digest, withDigest(location, digest), await readSlice(content, 0, size), what);
  }

  /** PATCH chunks, each at the Location the previous answer gave, then an empty closing PUT. */
  private async uploadChunked({ digest, size }: Descriptor, content: BlobContent, start: string, what: string): Promise<void> {
    let location = start;
    for (let offset = 0; offset < size; offset += this.chunkSize) {
      const chunk = await readSlice(content, offset, Math.min(this.chunkSize, size - offset));
      const response = await this.client.exchange({
        method: 'PATCH',
        path: location,
        headers: () => ({
          'content-type': OCTET_STREAM,
          'content-length': String(chunk.length),
          'content-range': `${offset}-${offset + chunk.length - 1}`,
        }),
        body: chunk,
        expect: [202],
        what,
        subject: `upload session of blob ${digest}`,
      });
      discardBody(response);
      location = nextLocation(response, location, what);
    }
    await this.finishUpload(digest, withDigest(location, digest), Buffer.alloc(0), what);
  }

  private async finishUpload(digest: string, location: string, body: Buffer, what: string): Promise<void> {
    const response = await this.client.exchange({
      method: 'PUT',
      path: location,
      headers: () => ({ 'content-type': OCTET_STREAM, 'content-length': String(body.length) }),
      body,
      expect: [201],
      what,
      subject: `upload session of blob ${digest}`,
    });
    discardBody(response);
    checkStoredDigest(response, digest, what);
  }
}

/** A pusher to `target`'s repository, with the credentials, retries and transport of `options`. */
export function openRegistryPusher(target: ImageReference, options: PushOptions): RegistryPusher {
  const clientOptions = registryClientOptions(options);
  return new RegistryPusher(target, new RegistryClient(target, clientOptions), clientOptions.retry, options.chunkSize);
}

/**
 * Copies the image `source` names (an index with all its images, or one
 * manifest) to the pusher's repository under `tag`: blobs first, then
 * manifests, then the tag, so the registry never holds a dangling reference.
 * Returns the digest of the top manifest.
 */
export async function copyImage(source: ContentStore, pusher: RegistryPusher, tag: string, options: { mountFrom?: string } = {}): Promise<string> {
  const root = await source.fetchRootManifest();
  const document = JSON.parse(root.bytes.toString('utf8')) as ImageManifest & ImageIndex;
  const mediaType = document.mediaType ?? root.mediaType;
  if (INDEX_TYPES.has(mediaType)) {
    for (const entry of document.manifests) {
      const manifest = await source.fetchManifest(entry);
      await pushManifestContent(source, pusher, JSON.parse(manifest.bytes.toString('utf8')) as ImageManifest, options);
      await pusher.pushManifest(entry.digest, manifest.bytes, entry.mediaType);
    }
  } else {
    await pushManifestContent(source, pusher, document, options);
  }
  return pusher.pushManifest(tag, root.bytes, mediaType);
}

async function pushManifestContent(source: ContentStore, pusher: RegistryPusher, manifest: ImageManifest, options: { mountFrom?: string }): Promise<void> {
  await pusher.pushBlob(manifest.config, { bytes: await source.fetchBlob(manifest.config) }, options);
  for (const layer of manifest.layers) await pusher.pushBlob(layer, { path: await source.blobPath(layer) }, options);
}
