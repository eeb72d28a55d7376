/**
 * A small but realistic "language image" for end-to-end tests: a busybox base
 * layer, a toolchain layer and a patch layer, exercising whiteouts, opaque
 * directories, hard links across layers, setuid, fifos and devices, with the
 * toolchain on PATH only through the config's Env (like official images).
 */
import { readFileSync } from 'node:fs';
import { busyboxBinary } from './debian.ts';
import type { ImageSpec, TarEntrySpec } from './oci-builder.ts';

const APPLETS = ['sh', 'ls', 'cat', 'echo', 'pwd', 'env', 'uname', 'id'];

export const LANG_HELLO = `#!/bin/sh
echo "hello from lang $LANG_VERSION in $(pwd) as $(id -u)"
`;

function baseLayer(architecture: string): TarEntrySpec[] {
  return [
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', content: readFileSync(busyboxBinary(architecture)), mode: 0o755 },
    ...APPLETS.map((applet): TarEntrySpec => ({ name: `bin/${applet}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { name: 'etc/motd', content: 'base motd\n' },
    { name: 'usr/share/doc/base/README', content: 'documentation to be deleted\n' },
    { name: 'usr/share/doc/base/copyright', content: 'also deleted\n' },
    { name: 'var/cache/apt/pkgcache.bin', content: 'stale cache\n' },
    { name: 'usr/bin/su-like', content: 'setuid\n', mode: 0o4755 },
    { name: 'srv/', type: 'directory', uid: 1000, gid: 1000 },
    { name: 'srv/data.txt', content: 'data owned by 1000\n', uid: 1000, gid: 1000 },
    { name: 'usr/lib/base/libshared.so', content: 'shared library bytes\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'var/run/app.fifo', type: 'fifo', mode: 0o600 },
    { name: 'usr/lib/dev/null-copy', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
  ];
}

function toolchainLayer(): TarEntrySpec[] {
  return [
    { name: 'opt/lang/bin/lang-hello', content: LANG_HELLO, mode: 0o755 },
    { name: 'opt/lang/bin/lang-hello-link', type: 'link', linkname: 'opt/lang/bin/lang-hello' },
    { name: 'usr/share/doc/.wh.base', content: '' },
    { name: 'var/cache/.wh..wh..opq', content: '' },
    { name: 'var/cache/lang/index', content: 'fresh cache\n' },
    { name: 'usr/lib/lang/libshared.so', type: 'link', linkname: 'usr/lib/base/libshared.so' },
  ];
}

function patchLayer(): TarEntrySpec[] {
  return [
    { name: 'etc/motd', content: 'patched motd\n' },
    { name: 'etc/.wh.passwd-', content: '' },
    { name: 'usr/bin/.wh.su-like', content: '' },
    { name: 'opt/lang/VERSION', content: '1.0\n' },
  ];
}

/** The image for an OCI architecture (amd64, arm64), with that arch's busybox so it runs when booted. */
export function languageImageSpec(architecture = 'amd64'): ImageSpec {
  return {
    architecture,
    layers: [
      { entries: baseLayer(architecture), compression: 'gzip' },
      { entries: toolchainLayer(), compression: 'zstd' },
      { entries: patchLayer(), compression: 'none' },
    ],
    env: ['PATH=/opt/lang/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG_VERSION=1.0'],
    workingDir: '/srv',
    cmd: ['lang-hello'],
  };
}

/** Paths the flattened image must have, and paths it must not. */
export const EXPECTED_PRESENT = [
  'bin/busybox', 'bin/sh', 'etc/motd', 'etc/passwd', 'opt/lang/bin/lang-hello', 'opt/lang/bin/lang-hello-link',
  'var/cache/lang/index', 'usr/lib/lang/libshared.so', 'usr/lib/base/libshared.so', 'srv/data.txt',
  'var/run/app.fifo', 'usr/lib/dev/null-copy', 'opt/lang/VERSION',
  'init', 'dev/console', 'etc/rampack/image.json', 'proc', 'sys', 'run', 'root', 'tmp', 'dev',
];
export const EXPECTED_ABSENT = ['usr/share/doc/base', 'usr/share/doc/base/README', 'var/cache/apt', 'usr/bin/su-like'];
