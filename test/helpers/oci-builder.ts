/**
 * Generates OCI image layouts for tests: layers written as real tar streams
 * (tar-stream, independent of rampack's own reader, or the raw encoder below
 * for what tar-stream cannot write), compressed with gzip, zstd or not at
 * all, plus config, manifest and index, all content-addressed.
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

/** A layer from entries (written by tar-stream) or from a whole uncompressed tar (see rawTar). */
export interface LayerSpec {
  entries?: TarEntrySpec[];
  tar?: Buffer;
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

/** The largest id tar-stream writes in its 6-digit octal ustar fields; it silently caps larger ones. */
const MAX_USTAR_ID = 0o777777;

/** PAX records for ids tar-stream would cap, merged under the entry's own records. */
function paxForIds(entry: TarEntrySpec): Record<string, string> | undefined {
  const records: Record<string, string> = {};
  if ((entry.uid ?? 0) > MAX_USTAR_ID) records.uid = String(entry.uid);
  if ((entry.gid ?? 0) > MAX_USTAR_ID) records.gid = String(entry.gid);
  return Object.keys(records).length === 0 && entry.pax === undefined ? undefined : { ...records, ...entry.pax };
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
      pax: paxForIds(entry),
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
    const raw = layer.tar ?? (await tarBytes(layer.entries ?? []));
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

/**
 * One tar entry encoded by hand, for what tar-stream cannot write: names and
 * link targets as raw bytes, GNU long names ('L'/'K'), PAX records with
 * binary values, device numbers above 262143, sizes that differ from the data.
 */
export interface RawEntrySpec {
  /** Bytes of the name (a string is taken as UTF-8). */
  name: string | Buffer;
  /** Tar typeflag: '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo, ... */
  typeflag?: string;
  data?: Buffer;
  /** The size field; defaults to the data's length. */
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string | Buffer;
  devmajor?: number;
  devminor?: number;
  /** How names and link names over 100 bytes are written; default 'pax'. */
  longNames?: 'gnu' | 'pax';
  pax?: Record<string, string | Buffer>;
  /** The magic and version fields; default POSIX ustar. '' gives a v7 header. */
  magic?: string;
}

const BLOCK = 512;
const NAME_FIELD = 100;
/** Two zero blocks: the end-of-archive marker. */
export const TAR_END = Buffer.alloc(2 * BLOCK);

/** A tar header block; names longer than the field are the caller's business (see rawTarEntry). */
export function tarHeader(spec: Omit<RawEntrySpec, 'data' | 'pax' | 'longNames'>): Buffer {
  const header = Buffer.alloc(BLOCK);
  Buffer.from(spec.name).copy(header, 0, 0, NAME_FIELD);
  writeNumber(header, 100, 8, spec.mode ?? 0o644);
  writeNumber(header, 108, 8, spec.uid ?? 0);
  writeNumber(header, 116, 8, spec.gid ?? 0);
  writeNumber(header, 124, 12, spec.size ?? 0);
  writeNumber(header, 136, 12, spec.mtime ?? 1_700_000_000);
  header.write(spec.typeflag ?? '0', 156, 'latin1');
  if (spec.linkname !== undefined) Buffer.from(spec.linkname).copy(header, 157, 0, NAME_FIELD);
  header.write(spec.magic ?? 'ustar\x0000', 257, 'latin1');
  writeNumber(header, 329, 8, spec.devmajor ?? 0);
  writeNumber(header, 337, 8, spec.devminor ?? 0);
  header.fill(0x20, 148, 156);
  const sum = header.reduce((total, byte) => total + byte, 0);
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return header;
}

/** Octal when it fits the field, else GNU base-256 (which Go, GNU tar and rampack read). */
function writeNumber(header: Buffer, offset: number, length: number, value: number): void {
  const octal = value.toString(8);
  if (octal.length < length) {
    header.write(`${octal.padStart(length - 1, '0')}\0`, offset, 'latin1');
    return;
  }
  let rest = BigInt(value);
  for (let index = length - 1; index > 0; index--) {
    header[offset + index] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  header[offset] = 0x80;
}

/** `data` followed by zeros up to the next 512-byte boundary. */
export function padBlock(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK)]);
}

/** A PAX extended header body: "LENGTH key=value\n" records (values may be binary). */
export function paxBody(records: Record<string, string | Buffer>): Buffer {
  return Buffer.concat(
    Object.entries(records).map(([key, value]) => {
      const rest = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
      let length = rest.length + 1;
      while (String(length).length + rest.length !== length) length++;
      return Buffer.concat([Buffer.from(String(length)), rest]);
    }),
  );
}

/** The header blocks (with any GNU long-name or PAX entries before them) and padded data of one entry. */
export function rawTarEntry(spec: RawEntrySpec): Buffer {
  const name = Buffer.from(spec.name);
  const linkname = spec.linkname === undefined ? undefined : Buffer.from(spec.linkname);
  const data = spec.data ?? Buffer.alloc(0);
  const pax: Record<string, string | Buffer> = { ...spec.pax };
  const blocks: Buffer[] = [];
  const longField = (value: Buffer, gnuType: string, paxKey: string): void => {
    if (value.length <= NAME_FIELD) return;
    if (spec.longNames === 'gnu') blocks.push(metadataEntry('././@LongLink', gnuType, Buffer.concat([value, Buffer.alloc(1)])));
    else pax[paxKey] = value;
  };
  longField(name, 'L', 'path');
  if (linkname !== undefined) longField(linkname, 'K', 'linkpath');
  if (Object.keys(pax).length > 0) blocks.push(metadataEntry(`PaxHeader/${name.subarray(0, 80).toString('latin1')}`, 'x', paxBody(pax)));
  blocks.push(tarHeader({ ...spec, name, linkname, size: spec.size ?? data.length }), padBlock(data));
  return Buffer.concat(blocks);
}

function metadataEntry(name: string, typeflag: string, body: Buffer): Buffer {
  return Buffer.concat([tarHeader({ name: Buffer.from(name, 'latin1'), typeflag, size: body.length }), padBlock(body)]);
}

/** A whole tar archive of raw entries, end marker included. */
export function rawTar(entries: RawEntrySpec[]): Buffer {
  return Buffer.concat([...entries.map(rawTarEntry), TAR_END]);
}
