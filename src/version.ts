import { readFileSync } from 'node:fs';

/** rampack's own version, from package.json (src/ and dist/ sit at the same depth). */
export const TOOL_VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
