/**
 * npm run build:native (also the last step of `build` and `prepare`):
 * compiles rampack's optional native addons into dist/native/ (see
 * src/compress/native-build.ts). Without a C compiler or a library's files
 * this prints one line per addon and exits 0.
 *
 *   node scripts/build-native.ts
 */
import { buildNativeAddons } from '../src/compress/native-build.ts';

if (import.meta.main) buildNativeAddons('npm run build:native');
