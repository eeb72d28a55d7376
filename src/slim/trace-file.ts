/**
 * The trace of a slim variant: the image's files a recipe's workload opened,
 * with the image digests it was taken from. `rampack slim` writes it; it is
 * committed next to the recipe and reviewed like code, and a build reads it
 * instead of booting, so a slim image is reproducible from image + trace +
 * recipe. Text, one path per line:
 *
 *   # comment lines
 *   image docker.io/library/python:3.15-slim-trixie
 *   manifestDigest sha256:...
 *   configDigest sha256:...
 *   workload sha256:...          (the workload the trace ran, see workloadDigest)
 *
 *   /usr/bin/python3.15
 *   ...
 *
 * Paths are absolute, sorted bytewise, with bytes outside 0x21-0x7e and "\"
 * written as \xHH (the tracer's own escaping, src/slim/tracer.c).
 */
import { InputError } from '../errors.ts';
import { writeFileAtomically } from '../util/atomic.ts';
import { INPUT_FILE_LIMITS, readInputText } from '../util/input-file.ts';

export interface SlimTrace {
  image: string;
  manifestDigest: string;
  configDigest: string;
  workload: string;
  /** Tree paths (byte strings, no leading "/"), sorted bytewise. */
  paths: string[];
}

const HEADER_KEYS = ['image', 'manifestDigest', 'configDigest', 'workload'] as const;

/** Undoes \xHH escapes: a byte-string path. */
export function unescapeTracePath(text: string): string {
  return text.replace(/\\x([0-9a-f]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

function escapeTracePath(path: string): string {
  return [...path].map((c) => (c.charCodeAt(0) <= 0x20 || c.charCodeAt(0) > 0x7e || c === '\\' ? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}` : c)).join('');
}

export function formatTrace(trace: SlimTrace, description: string): string {
  const paths = [...new Set(trace.paths)].sort();
  return [
    `# rampack slim trace: ${description}`,
    '# Written by `rampack slim`; `rampack build` keeps these files (and the recipe\'s slim.keep) in the slim variant.',
    ...HEADER_KEYS.map((key) => `${key} ${trace[key]}`),
    '',
    ...paths.map((path) => `/${escapeTracePath(path)}`),
    '',
  ].join('\n');
}

export function parseTrace(text: string, file: string): SlimTrace {
  const lines = text.split('\n');
  const header = new Map<string, string>();
  let at = 0;
  for (; at < lines.length && lines[at] !== ''; at++) {
    const line = lines[at]!;
    if (line.startsWith('#')) continue;
    const space = line.indexOf(' ');
    header.set(space < 0 ? line : line.slice(0, space), space < 0 ? '' : line.slice(space + 1));
  }
  const missing = HEADER_KEYS.filter((key) => !header.get(key));
  if (missing.length > 0) {
    throw new InputError(`trace ${file} lacks ${missing.join(', ')} in its header`, { hint: 'write it with `rampack slim RECIPE`' });
  }
  const paths: string[] = [];
  for (const [index, line] of lines.slice(at + 1).entries()) {
    if (line === '') continue;
    if (!line.startsWith('/') || line.includes('//')) {
      throw new InputError(`trace ${file}:${at + index + 2}: "${line}" is not an absolute path`, { hint: 'write it with `rampack slim RECIPE`' });
    }
    paths.push(unescapeTracePath(line.slice(1)));
  }
  return {
    image: header.get('image')!,
    manifestDigest: header.get('manifestDigest')!,
    configDigest: header.get('configDigest')!,
    workload: header.get('workload')!,
    paths: paths.sort(),
  };
}

export async function readTraceFile(file: string): Promise<SlimTrace> {
  const text = await readInputText(file, 'trace', INPUT_FILE_LIMITS.trace, 'trace the image first: rampack slim RECIPE');
  return parseTrace(text, file);
}

export async function writeTraceFile(file: string, trace: SlimTrace, description: string): Promise<void> {
  await writeFileAtomically(file, formatTrace(trace, description));
}
