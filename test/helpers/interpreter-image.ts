/**
 * An image built like an official language image, from Debian packages: a
 * base layer (glibc, a dynamically linked busybox as the shell, the
 * libraries Python's extension modules link against), a Python layer
 * (python3.11 with its standard library) and a "compiler" layer the Python
 * workload never touches (cpp-12 and perl), so a slim variant has something
 * real to drop. Files keep their modes, symlinks and hard links (perl).
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import { debianPackageRoot } from './debian.ts';
import type { ImageSpec, TarEntrySpec } from './oci-builder.ts';

const BASE = ['libc6', 'busybox', 'zlib1g', 'libexpat1', 'libssl3', 'libffi8', 'libbz2-1.0', 'liblzma5', 'libcrypt1', 'media-types'];
const PYTHON = ['python3.11-minimal', 'libpython3.11-minimal', 'libpython3.11-stdlib'];
const COMPILER = ['cpp-12', 'libisl23', 'libmpc3', 'libmpfr6', 'libgmp10', 'perl-base'];

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

/** The python3.11 image for an OCI/Debian arch (amd64, arm64). */
export function interpreterImageSpec(debianArch = 'amd64'): ImageSpec {
  const extra: TarEntrySpec[] = [
    { name: 'usr/bin/python3', type: 'symlink', linkname: 'python3.11' },
    { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { name: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'srv/', type: 'directory' },
  ];
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
