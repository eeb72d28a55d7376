/**
 * Generated layers of a few megabytes, in walk order like most image
 * builders write them: enough data for many small shards, with a patch
 * layer that overwrites, whites out, hard-links and makes a directory opaque.
 * Used to check that shards written while layers unpack change no byte.
 */
import { compareTreePaths } from '../../src/tree/entry.ts';
import type { TarEntrySpec } from './oci-builder.ts';

/** Compressible but not trivial data, different for every seed. */
export function generatedContent(seed: number, size: number): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'lambda', 'omega', '\n', ' '];
  let state = seed * 2654435761;
  const parts: string[] = [];
  for (let length = 0; length < size; ) {
    state = (state * 1103515245 + 12345) >>> 0;
    const word = words[state % words.length]!;
    parts.push(word);
    length += word.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

const dir = (name: string): TarEntrySpec => ({ name, type: 'directory' });
const file = (name: string, seed: number, size = 12 * 1024): TarEntrySpec => ({ name, content: generatedContent(seed, size) });

/** Sorted the way archives are: a directory, then its subtree. */
export function walkOrder(entries: TarEntrySpec[]): TarEntrySpec[] {
  return [...entries].sort((a, b) => compareTreePaths(a.name, b.name));
}

function manyFiles(directory: string, count: number, seed: number): TarEntrySpec[] {
  return [dir(directory), ...Array.from({ length: count }, (_, i) => file(`${directory}/f${i}`, seed + i))];
}

/** usr/lib and usr/lib-extra: walk order and plain bytewise order differ there. */
export const GENERATED_BASE = walkOrder([
  dir('usr'), ...manyFiles('usr/bin', 30, 100), ...manyFiles('usr/lib', 30, 200), ...manyFiles('usr/lib-extra', 80, 300),
  dir('etc'), file('etc/os-release', 1, 100),
]);
export const GENERATED_TOOLCHAIN = walkOrder([
  dir('usr'), dir('usr/lib'), ...manyFiles('usr/lib/lang', 60, 400), dir('usr/share'), ...manyFiles('usr/share/lang', 40, 500),
]);
/** Replaces usr/bin/f3, removes usr/bin/f4, links usr/bin/f5, empties usr/lib/lang but for `new` and `current`. */
export const GENERATED_PATCH = walkOrder([
  dir('usr'), dir('usr/bin'), file('usr/bin/f3', 999), { name: 'usr/bin/.wh.f4', content: '' },
  { name: 'usr/bin/f5-link', type: 'link', linkname: 'usr/bin/f5' }, { name: 'usr/lib/lang/.wh..wh..opq', content: '' },
  file('usr/lib/lang/new', 7), { name: 'usr/lib/lang/current', type: 'symlink', linkname: 'new' },
]);
