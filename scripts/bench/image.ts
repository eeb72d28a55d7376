/**
 * The benchmark images, made from real Debian packages and written as OCI
 * layouts with gzip layers, built once per machine and cached like any test
 * fixture: the standard one, a realistic three-layer "golang" image (base
 * system, Go toolchain and sources, C toolchain), about 700 MB unpacked; and
 * a larger one with two more layers (Rust toolchain with LLVM, a JDK), about
 * twice that, to show how memory grows with the image.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TEST_CACHE } from '../../test/helpers/debian.ts';
import { writeBlob } from '../../test/helpers/oci-builder.ts';

const STANDARD_LAYERS: readonly (readonly string[])[] = [
  ['libc6', 'coreutils', 'perl-base', 'perl-modules-5.36', 'libperl5.36', 'python3.11-minimal', 'libpython3.11-stdlib', 'busybox-static'],
  ['golang-1.19-go', 'golang-1.19-src'],
  ['gcc-12', 'cpp-12', 'binutils-x86-64-linux-gnu', 'libc6-dev', 'libgcc-12-dev', 'libstdc++-12-dev'],
];

export type BenchImage = 'standard' | 'large';

const LAYERS: Readonly<Record<BenchImage, readonly (readonly string[])[]>> = {
  standard: STANDARD_LAYERS,
  large: [
    ...STANDARD_LAYERS,
    ['rustc', 'libstd-rust-1.63', 'libstd-rust-dev', 'libllvm14'],
    ['openjdk-17-jre-headless', 'openjdk-17-jdk-headless'],
  ],
};
const BENCH_CACHE = join(TEST_CACHE, 'bench');
export const BENCH_TAG = '1.19';

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

function download(packages: readonly string[], into: string): void {
  mkdirSync(into, { recursive: true });
  execFileSync('apt-get', ['download', ...packages], { cwd: into, stdio: 'pipe' });
}

/** Unpacks the packages into a root and tars it the way image builders do (sorted, numeric owners). */
function layerTar(packages: readonly string[], work: string, index: number): string {
  const debs = join(work, `debs-${index}`);
  const root = join(work, `root-${index}`);
  download(packages, debs);
  for (const deb of readdirSync(debs)) execFileSync('dpkg', ['-x', join(debs, deb), root]);
  const tar = join(work, `layer-${index}.tar`);
  execFileSync('tar', ['--sort=name', '--numeric-owner', '--owner=0', '--group=0', '--mtime=@1700000000', '-C', root, '-cf', tar, '.']);
  rmSync(root, { recursive: true, force: true });
  return tar;
}

async function moveIntoLayout(layout: string, file: string): Promise<{ digest: string; size: number }> {
  const digest = await sha256File(file);
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  renameSync(file, join(layout, 'blobs', 'sha256', digest.slice(7)));
  return { digest, size: statSync(join(layout, 'blobs', 'sha256', digest.slice(7))).size };
}

/** A benchmark image's OCI layout directory (tag BENCH_TAG), built on first use. */
export async function benchImageLayout(image: BenchImage = 'standard'): Promise<string> {
  const layout = join(BENCH_CACHE, image === 'standard' ? 'layout' : `layout-${image}`);
  if (existsSync(join(layout, 'index.json'))) return layout;
  const work = join(BENCH_CACHE, 'work');
  rmSync(work, { recursive: true, force: true });
  rmSync(layout, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const layers = [];
  const diffIds = [];
  for (const [index, packages] of LAYERS[image].entries()) {
    process.stderr.write(`bench image (${image}): layer ${index + 1}/${LAYERS[image].length} (${packages.join(' ')})\n`);
    const tar = layerTar(packages, work, index);
    diffIds.push(await sha256File(tar));
    execFileSync('gzip', ['-6', '-n', tar]);
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...(await moveIntoLayout(layout, `${tar}.gz`)) });
  }
  const config = {
    architecture: 'amd64',
    os: 'linux',
    created: '2024-01-01T00:00:00Z',
    config: { Env: ['PATH=/usr/lib/go-1.19/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['go', 'version'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const configBlob = await writeBlob(layout, Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.config.v1+json');
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: configBlob, layers };
  const manifestBlob = await writeBlob(layout, Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const index = { schemaVersion: 2, manifests: [{ ...manifestBlob, annotations: { 'org.opencontainers.image.ref.name': BENCH_TAG } }] };
  writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
  rmSync(work, { recursive: true, force: true });
  return layout;
}
