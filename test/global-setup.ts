/**
 * Runs once before any test file: installs every Debian tool the suite uses,
 * builds the native addon and fetches the kernels and busybox, so test files
 * running in parallel never race for the apt/dpkg lock or the addon file.
 */
import { existsSync, statSync } from 'node:fs';
import { buildInflateAddon, INFLATE_ADDON, INFLATE_SOURCE } from '../scripts/build-native-inflate.ts';
import { ensureDebianKernel } from '../src/boot/kernel.ts';
import { busyboxBinary, KERNEL_CACHE } from './helpers/debian.ts';
import { ensureTools, TOOLS } from './helpers/system.ts';

export default async function setup(): Promise<void> {
  ensureTools(...Object.values(TOOLS));
  ensureInflateAddon();
  busyboxBinary();
  await ensureDebianKernel('x86_64', KERNEL_CACHE);
  await ensureDebianKernel('aarch64', KERNEL_CACHE);
}

/** The ISA-L addon, rebuilt when missing or older than its source; CI must have it, so gunzip is tested through it. */
function ensureInflateAddon(): void {
  if (existsSync(INFLATE_ADDON) && statSync(INFLATE_ADDON).mtimeMs >= statSync(INFLATE_SOURCE).mtimeMs) return;
  const { built, message } = buildInflateAddon({ warningsAsErrors: true });
  console.log(message);
  if (!built && process.env.CI) throw new Error(`CI must test gunzip through ISA-L: ${message}`);
}
