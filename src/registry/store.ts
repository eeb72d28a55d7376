/** A registry repository as a ContentStore: verified documents, and layers downloaded into the blob cache. */
import { InputError, VerificationError } from '../errors.ts';
import { checkDocumentSize, DOCUMENT_SIZE_LIMITS } from '../oci/limits.ts';
import type { ImageReference } from '../oci/reference.ts';
import type { ContentStore, IncomingBlob } from '../oci/content.ts';
import { MANIFEST_MEDIA_TYPES, type Descriptor, type FetchedManifest } from '../oci/types.ts';
import { digestHex, isDigest, sha256Digest } from '../util/digest.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { TOOL_VERSION } from '../version.ts';
import { BlobCache, type PartialBlob } from './cache.ts';
import type { Cache } from '../cache/cache.ts';
import { readBody, RegistryClient, type ClientOptions, type RegistryRequest } from './client.ts';
import { credentialLookup } from './credentials.ts';
import { CacheDownload } from './follow.ts';
import { DEFAULT_MAX_ATTEMPTS } from './retry.ts';
import { sharedTransport, type HttpResponse, type TransportOptions } from './transport.ts';

export interface RegistryOptions extends TransportOptions {
  /** The cache blobs are downloaded into (cache/cache.ts). */
  cache: Cache;
  username?: string;
  password?: string;
  /** Where config.json lives; default `$DOCKER_CONFIG`, else `~/.docker`. */
  dockerConfigDir?: string;
  userAgent?: string;
  log?: Logger;
  /** Attempts per request before giving up (default 5). */
  maxAttempts?: number;
  /** First retry backoff, doubling with each attempt (default 500 ms; RAMPACK_RETRY_BASE_MS on the CLI). */
  retryBaseMs?: number;
  /** Stop retrying a request that has been failing this long (default 2 min). */
  maxRetryTimeMs?: number;
  /** Called with each chunk's size as a layer downloads (for progress display); negative when a download starts over. */
  onBlobBytes?: (digest: string, bytes: number) => void;
}

const MANIFEST_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

function isForeign(descriptor: Descriptor): boolean {
  return (descriptor.urls?.length ?? 0) > 0 || /foreign|nondistributable/.test(descriptor.mediaType);
}

function servedMediaType(response: HttpResponse): string | undefined {
  return response.headers.get('content-type')?.split(';')[0]!.trim() || undefined;
}

export class RegistryStore implements ContentStore {
  readonly reference: string;
  private readonly image: ImageReference;
  private readonly client: RegistryClient;
  private readonly cache: BlobCache;
  private readonly log: Logger;
  /** One download per digest, however many layers share it; a failed one may be asked for again. */
  private readonly downloads = new Map<string, CacheDownload>();

  private readonly onBlobBytes?: RegistryOptions['onBlobBytes'];

  constructor(image: ImageReference, client: RegistryClient, cache: BlobCache, log: Logger, onBlobBytes?: RegistryOptions['onBlobBytes']) {
    this.onBlobBytes = onBlobBytes;
    this.image = image;
    this.reference = image.toString();
    this.client = client;
    this.cache = cache;
    this.log = log;
  }

  fetchRootManifest(): Promise<FetchedManifest> {
    const { digest, tag } = this.image;
    return this.getManifest(digest ?? tag!, `image ${this.reference}`, digest === undefined ? undefined : { digest });
  }

  fetchManifest(descriptor: Descriptor): Promise<FetchedManifest> {
    return this.getManifest(descriptor.digest, `manifest ${descriptor.digest} of image ${this.reference}`, descriptor);
  }

  async fetchBlob(descriptor: Descriptor): Promise<Buffer> {
    const subject = `blob ${descriptor.digest} of image ${this.reference}`;
    checkDocumentSize(descriptor.size, 'config', subject);
    return this.client.get(this.blobRequest(descriptor, subject), async (response) => {
      const bytes = await readBody(response, descriptor.size, subject);
      checkContent(bytes, descriptor, subject);
      return bytes;
    });
  }

  blobPath(descriptor: Descriptor): Promise<string> {
    return this.incomingBlob(descriptor).path;
  }

  incomingBlob(descriptor: Descriptor): IncomingBlob {
    const { digest } = descriptor;
    let download = this.downloads.get(digest);
    if (!download) {
      const subject = `layer ${digest} of image ${this.reference}`;
      download = new CacheDownload(subject, (writing) => this.download(descriptor, subject, writing));
      this.downloads.set(digest, download);
      download.path.catch(() => this.downloads.delete(digest));
    }
    return download;
  }

  /** Downloads the blob into the cache, telling `writing` the blob being written once its file exists. */
  private async download(descriptor: Descriptor, subject: string, writing: (blob: PartialBlob) => void): Promise<string> {
    const { digest, size } = descriptor;
    if (isForeign(descriptor)) {
      throw new InputError(`${subject} is a foreign (non-distributable) layer (${descriptor.mediaType}${descriptor.urls ? `, hosted at ${descriptor.urls.join(', ')}` : ''})`, {
        hint: 'rampack builds Linux images from distributable layers only; use an image without foreign layers',
      });
    }
    if (await this.cache.has(digest, size)) return this.cache.path(digest);
    this.log.info(`downloading ${subject} (${size} bytes)`);
    return this.cache.write(digest, size, (blob) => {
      writing(blob);
      return this.client.download(this.blobRequest(descriptor, subject), {
        get received() {
          return blob.received;
        },
        append: (chunks) => blob.append(this.counted(digest, chunks)),
        restart: () => {
          // The bytes so far are thrown away: take them back from the progress count.
          this.onBlobBytes?.(digest, -blob.received);
          return blob.restart();
        },
      });
    });
  }

  private async *counted(digest: string, chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    for await (const chunk of chunks) {
      this.onBlobBytes?.(digest, chunk.length);
      yield chunk;
    }
  }

  private blobRequest(descriptor: Descriptor, subject: string): RegistryRequest {
    digestHex(descriptor.digest, subject);
    return {
      path: `/v2/${this.image.repository}/blobs/${descriptor.digest}`,
      what: `downloading ${subject} from ${this.image.registry}`,
      subject,
    };
  }

  /** GETs a manifest by tag or digest; `expected` (by digest) is verified, a tag's bytes are hashed. */
  private getManifest(ref: string, subject: string, expected?: { digest: string; size?: number; mediaType?: string }): Promise<FetchedManifest> {
    const request: RegistryRequest = {
      path: `/v2/${this.image.repository}/manifests/${ref}`,
      accept: MANIFEST_ACCEPT,
      what: `fetching the manifest of ${subject} from ${this.image.registry}`,
      subject,
    };
    if (expected?.size !== undefined) checkDocumentSize(expected.size, 'manifest', subject);
    return this.client.get(request, async (response) => {
      const bytes = await readBody(response, expected?.size ?? DOCUMENT_SIZE_LIMITS.manifest, subject);
      const claimed = response.headers.get('docker-content-digest');
      const digest = expected?.digest ?? (claimed !== null && isDigest(claimed) ? claimed : sha256Digest(bytes));
      checkContent(bytes, { digest, size: expected?.size }, subject);
      return { bytes, digest, mediaType: servedMediaType(response) ?? expected?.mediaType ?? '' };
    });
  }
}

function checkContent(bytes: Buffer, expected: { digest: string; size?: number }, subject: string): void {
  if (expected.size !== undefined && bytes.length !== expected.size) {
    throw new VerificationError(`${subject}: the registry sent ${bytes.length} bytes, the descriptor says ${expected.size}`);
  }
  const actual = sha256Digest(bytes);
  if (actual !== expected.digest) {
    throw new VerificationError(`${subject} does not match its digest ${expected.digest} (the content hashes to ${actual})`, {
      hint: 'the registry served corrupt or altered content; retry, or report it to the registry operator',
    });
  }
}

/** What every client of a build shares: credentials, retry policy, log and transport. */
export function registryClientOptions(options: Omit<RegistryOptions, 'cache'>): ClientOptions {
  const log = options.log ?? silentLogger;
  return {
    lookup: credentialLookup(options),
    userAgent: options.userAgent ?? `rampack/${TOOL_VERSION}`,
    retry: {
      maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
      baseDelayMs: options.retryBaseMs,
      maxRetryTimeMs: options.maxRetryTimeMs,
      onRetry: (message) => log.debug(message),
    },
    log,
    transport: sharedTransport(options),
  };
}

/** A ContentStore for `reference`; nothing is fetched until a method is called. */
export function openRegistryStore(reference: ImageReference, options: RegistryOptions): RegistryStore {
  const clientOptions = registryClientOptions(options);
  const client = new RegistryClient(reference, clientOptions);
  return new RegistryStore(reference, client, new BlobCache(options.cache), clientOptions.log, options.onBlobBytes);
}
