/**
 * Images built like the official language images, from Debian packages, so
 * that a slim variant has something real to drop:
 * - python3.11: a base layer (glibc, a dynamically linked busybox as the
 *   shell, the libraries Python's extension modules link against), a Python
 *   layer (python3.11 with its standard library) and a "compiler" layer the
 *   Python workload never touches (cpp-12 and perl);
 * - golang 1.19: the same base with the tools buildpack-deps:scm brings
 *   (perl, python3.11), the Go toolchain at /usr/local/go (Debian's
 *   golang-1.19 with its sources and precompiled packages) and the C
 *   toolchain cgo calls (gcc-12, binutils, libc headers), as the official
 *   golang image has.
 * Files keep their modes, symlinks and hard links (perl).
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { REPO_ROOT } from './cli.ts';
import { debianPackageRoot } from './debian.ts';
import type { ImageSpec, TarEntrySpec } from './oci-builder.ts';

const BASE = ['libc6', 'busybox', 'zlib1g', 'libexpat1', 'libssl3', 'libffi8', 'libbz2-1.0', 'liblzma5', 'libcrypt1', 'media-types'];
const PYTHON = ['python3.11-minimal', 'libpython3.11-minimal', 'libpython3.11-stdlib'];
const COMPILER = ['cpp-12', 'libisl23', 'libmpc3', 'libmpfr6', 'libgmp10', 'perl-base'];
const SCM_TOOLS = ['perl-base', 'perl-modules-5.36', 'libperl5.36', 'libgdbm6', 'libdb5.3', ...PYTHON];
const GO = ['golang-1.19-go', 'golang-1.19-src'];
const C_TOOLCHAIN = [
  'gcc-12', 'cpp-12', 'gcc-12-base', 'libgcc-12-dev', 'libcc1-0', 'libisl23', 'libmpc3', 'libmpfr6', 'libgmp10', 'libzstd1',
  'binutils', 'binutils-x86-64-linux-gnu', 'binutils-common', 'libbinutils', 'libctf0', 'libctf-nobfd0', 'libjansson4', 'libgprofng0',
  'libgomp1', 'libitm1', 'libatomic1', 'libasan8', 'liblsan0', 'libtsan2', 'libubsan1', 'libquadmath0', 'libstdc++6', 'libgcc-s1',
  'libc6-dev', 'libc-dev-bin', 'linux-libc-dev', 'libcrypt-dev', 'libnsl-dev', 'libtirpc-dev', 'rpcsvc-proto',
];

/** The entries of extracted package roots, one per path (a later package wins), hard links as links to the first path. */
function packageEntries(packages: readonly string[], debianArch: string): TarEntrySpec[] {
  const byPath = new Map<string, TarEntrySpec>();
  for (const pkg of packages) {
    const root = debianPackageRoot(pkg, debianArch);
    const firstOfInode = new Map<string, string>();
    const walk = (dir: string) => {
      for (const name of readdirSync(dir).sort()) {
        const path = join(dir, name);
        const name_ = relative(root, path);
        const info = lstatSync(path);
        const mode = info.mode & 0o7777;
        if (info.isDirectory()) {
          if (!byPath.has(`${name_}/`)) byPath.set(`${name_}/`, { name: `${name_}/`, type: 'directory', mode });
          walk(path);
        } else if (info.isSymbolicLink()) {
          byPath.set(name_, { name: name_, type: 'symlink', linkname: readlinkSync(path) });
        } else if (info.isFile()) {
          const inode = `${info.dev}:${info.ino}`;
          const first = info.nlink > 1 ? firstOfInode.get(inode) : undefined;
          if (first !== undefined) byPath.set(name_, { name: name_, type: 'link', linkname: first });
          else {
            firstOfInode.set(inode, name_);
            byPath.set(name_, { name: name_, content: readFileSync(path), mode });
          }
        }
      }
    };
    walk(root);
  }
  return [...byPath.values()];
}

/** What every image's base layer has besides its packages: a shell, users, /tmp. */
const BASE_EXTRA: TarEntrySpec[] = [
  { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
  { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
  { name: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
  { name: 'tmp/', type: 'directory', mode: 0o1777 },
  { name: 'srv/', type: 'directory' },
];

/** The python3.11 image for an OCI/Debian arch (amd64, arm64). */
export function interpreterImageSpec(debianArch = 'amd64'): ImageSpec {
  const extra: TarEntrySpec[] = [{ name: 'usr/bin/python3', type: 'symlink', linkname: 'python3.11' }, ...BASE_EXTRA];
  return {
    architecture: debianArch,
    layers: [
      { entries: [...packageEntries(BASE, debianArch), ...extra], compression: 'gzip' },
      { entries: packageEntries(PYTHON, debianArch), compression: 'zstd' },
      { entries: packageEntries(COMPILER, debianArch), compression: 'gzip' },
    ],
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'PYTHONDONTWRITEBYTECODE=1'],
    workingDir: '/srv',
    cmd: ['python3'],
  };
}

/** The Go 1.19 image (amd64): GOROOT /usr/local/go, as in the official image (a link to Debian's /usr/lib/go-1.19). */
export function golangImageSpec(): ImageSpec {
  const debianArch = 'amd64';
  const goLinks: TarEntrySpec[] = [
    { name: 'usr/local/', type: 'directory' },
    { name: 'usr/local/go', type: 'symlink', linkname: '/usr/lib/go-1.19' },
    { name: 'go/', type: 'directory', mode: 0o1777 },
    { name: 'go/src/', type: 'directory', mode: 0o1777 },
    { name: 'go/bin/', type: 'directory', mode: 0o1777 },
  ];
  const compilerLinks: TarEntrySpec[] = [
    { name: 'usr/bin/gcc', type: 'symlink', linkname: 'gcc-12' },
    { name: 'usr/bin/cc', type: 'symlink', linkname: 'gcc-12' },
    { name: 'usr/bin/python3', type: 'symlink', linkname: 'python3.11' },
  ];
  return {
    architecture: debianArch,
    layers: [
      { entries: [...packageEntries([...BASE, ...SCM_TOOLS], debianArch), ...BASE_EXTRA], compression: 'gzip' },
      { entries: [...packageEntries(GO, debianArch), ...goLinks], compression: 'gzip' },
      { entries: [...packageEntries(C_TOOLCHAIN, debianArch), ...compilerLinks], compression: 'zstd' },
    ],
    env: ['PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'GOPATH=/go', 'GOCACHE=/tmp/go-build', 'GOTOOLCHAIN=local'],
    workingDir: '/go',
    cmd: ['bash'],
  };
}

/** The Go toolchain and what cgo needs, without the precompiled packages (kept only as traced) and the tools no build runs. */
const GOLANG_SLIM_KEEP = [
  'usr/lib/go-1.19/VERSION',
  'usr/lib/go-1.19/bin/**',
  'usr/lib/go-1.19/pkg/include',
  ...['compile', 'link', 'asm', 'cgo', 'vet', 'buildid', 'pack', 'cover', 'test2json'].map((tool) => `usr/lib/go-1.19/pkg/tool/*/${tool}`),
  'usr/share/go-1.19/src/**',
  '"!usr/share/go-1.19/src/**/*_test.go"',
  '"!usr/share/go-1.19/src/**/testdata/**"',
  'usr/include/**',
  'usr/lib/gcc/**',
  '"!usr/lib/gcc/**/lto1"',
  'usr/bin/*gcc*',
  'usr/bin/cc',
  'usr/bin/*-linux-gnu-as',
  'usr/bin/*-linux-gnu-ld*',
  'usr/bin/as',
  'usr/bin/ld*',
  'usr/lib/*-linux-gnu/*crt*.o',
  'usr/lib/*-linux-gnu/libc.so',
  'usr/lib/*-linux-gnu/libc_nonshared.a',
];

/**
 * Writes a recipe for the Go image at `layout` into `dir` (go.yaml, with the
 * shipped Go workload in workloads/go) whose slim section builds and tests
 * the workload: what the slim tests and the bench trace. Returns its path.
 */
export async function writeGolangSlimRecipe(dir: string, layout: string, agent: string): Promise<string> {
  const workload = join(dir, 'workloads', 'go');
  await mkdir(workload, { recursive: true });
  await cp(join(REPO_ROOT, 'recipes', 'workloads', 'go'), workload, { recursive: true });
  // The shipped workload is written for current Go; its code is Go 1.19 too, only the module's go line is not.
  await writeFile(join(workload, 'go.mod'), 'module example.com/service\n\ngo 1.19\n');
  const recipe = join(dir, 'go.yaml');
  await writeFile(recipe, `language: go
image: oci:${layout}
versions: [{version: "1.19", tag: latest}]
arches: [x86_64]
agent: ${agent}
compression: zstd
smoke: [go, version]
slim:
  files: workloads/go
  workload:
    - [sh, -c, "cd /.rampack-probe/workload && go build -o /tmp/service ."]
    - [/tmp/service]
    - [sh, -c, "cd /.rampack-probe/workload && go test ./..."]
  keep:
${GOLANG_SLIM_KEEP.map((glob) => `    - ${glob}`).join('\n')}
`);
  return recipe;
}
