/**
 * Generates OCI image layouts for tests: layers written as real tar streams
 * (tar-stream, independent of rampack's own reader), compressed with gzip,
 * zstd or not at all, plus config, manifest and index, all content-addressed.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import tar from 'tar-stream';

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** One tar entry. `name` is written as given (tests may use "./x" or "/x"). */
export interface TarEntrySpec {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
}

export interface LayerSpec {
  entries: TarEntrySpec[];
  compression?: LayerCompression;
}

export interface ImageSpec {
  layers: LayerSpec[];
  architecture?: string;
  env?: string[];
  entrypoint?: string[];
  cmd?: string[];
  workingDir?: string;
  user?: string;
  created?: string;
}

export interface BuiltBlob {
  digest: string;
  size: number;
  mediaType: string;
}

const LAYER_MEDIA_TYPE: Record<LayerCompression, string> = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export async function tarBytes(entries: TarEntrySpec[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk) => chunks.push(chunk as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const entry of entries) {
    const content = entry.content === undefined ? undefined : Buffer.from(entry.content);
    const type = entry.type ?? 'file';
    const header = {
      name: entry.name,
      type,
      mode: entry.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: entry.uid ?? 0,
      gid: entry.gid ?? 0,
      mtime: new Date((entry.mtime ?? 1_700_000_000) * 1000),
      linkname: entry.linkname,
      devmajor: entry.devmajor,
      devminor: entry.devminor,
      pax: entry.pax,
      size: type === 'file' ? (content?.length ?? 0) : 0,
    };
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null) => (error ? reject(error) : resolve());
      if (type === 'file') pack.entry(header, content ?? Buffer.alloc(0), done);
      else pack.entry(header, done);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function compress(data: Buffer, compression: LayerCompression): Buffer {
  if (compression === 'gzip') return gzipSync(data);
  if (compression === 'zstd') return zstdCompressSync(data);
  return data;
}

/** Writes blobs of an OCI layout; returns the image manifest's descriptor. */
async function writeImage(dir: string, spec: ImageSpec): Promise<BuiltBlob> {
  const layers: BuiltBlob[] = [];
  const diffIds: string[] = [];
  for (const layer of spec.layers) {
    const raw = await tarBytes(layer.entries);
    const compression = layer.compression ?? 'gzip';
    diffIds.push(sha256(raw));
    layers.push(await writeBlob(dir, compress(raw, compression), LAYER_MEDIA_TYPE[compression]));
  }
  const config = {
    architecture: spec.architecture ?? 'amd64',
    os: 'linux',
    created: spec.created ?? '2024-01-01T00:00:00Z',
    config: {
      Env: spec.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Entrypoint: spec.entrypoint,
      Cmd: spec.cmd ?? ['/bin/sh'],
      WorkingDir: spec.workingDir,
      User: spec.user,
    },
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const configBlob = await writeBlob(dir, Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.config.v1+json');
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: configBlob,
    layers,
  };
  return writeBlob(dir, Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
}

export async function writeBlob(dir: string, data: Buffer, mediaType: string): Promise<BuiltBlob> {
  const digest = sha256(data);
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'blobs', 'sha256', digest.slice(7)), data);
  return { digest, size: data.length, mediaType };
}

/**
 * Writes an OCI image layout at `dir` holding one image (or, with several
 * specs, a multi-arch index of them) under the tag `tag`.
 */
export async function writeOciLayout(dir: string, specs: ImageSpec | ImageSpec[], tag = 'latest'): Promise<BuiltBlob> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  let top: BuiltBlob & { platform?: object };
  if (Array.isArray(specs)) {
    const manifests = [];
    for (const spec of specs) {
      const built = await writeImage(dir, spec);
      manifests.push({ ...built, platform: { architecture: spec.architecture ?? 'amd64', os: 'linux' } });
    }
    const index = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests };
    top = await writeBlob(dir, Buffer.from(JSON.stringify(index)), index.mediaType);
  } else {
    top = await writeImage(dir, specs);
  }
  const index = {
    schemaVersion: 2,
    manifests: [{ ...top, annotations: { 'org.opencontainers.image.ref.name': tag } }],
  };
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
  return top;
}
