// The package's install script (`npm install rampack`, `npm rebuild rampack`):
// builds the optional native addons with the system C compiler, or says on
// stderr what is missing (rampack then uses node:zlib). It never fails the
// install. In a git checkout it does nothing: `prepare` compiles rampack and
// then builds them (npm runs `install` before `prepare`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { rerunUnderRecentNode } from './node-runtime.js';

const checkout = existsSync(new URL('../src/cli/main.ts', import.meta.url));
if (!checkout) {
  rerunUnderRecentNode(fileURLToPath(import.meta.url), process.argv.slice(2));
  const { buildNativeAddons } = await import('../dist/compress/native-build.js');
  buildNativeAddons('npm rebuild rampack');
}
