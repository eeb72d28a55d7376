/**
 * Runs once before any test file: installs every Debian tool the suite uses,
 * builds the native addons (gzip and gunzip in the tests run on them; a
 * missing addon fails the suite) and fetches the kernels and busybox, so test
 * files running in parallel never race for the apt/dpkg lock or the addons.
 */
import { ensureDebianKernel } from '../src/boot/kernel.ts';
import { busyboxBinary, KERNEL_CACHE } from './helpers/debian.ts';
import { ensureNativeAddons } from './helpers/native.ts';
import { ensureTools, TOOLS } from './helpers/system.ts';

export default async function setup(): Promise<void> {
  ensureTools(...Object.values(TOOLS));
  ensureNativeAddons();
  busyboxBinary();
  await ensureDebianKernel('x86_64', KERNEL_CACHE);
  await ensureDebianKernel('aarch64', KERNEL_CACHE);
}
