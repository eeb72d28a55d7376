/**
 * npm run demo: the main job on an embedded default, with no network but
 * Debian's packages. Generates a small three-layer OCI image (busybox plus a
 * "language" layer), compiles the demo agent, runs `rampack build` on it, and
 * boots the result in QEMU when qemu-system-x86_64 is installed.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureDebianKernel } from '../src/boot/kernel.ts';
import { bootInitramfs, qemuCommand } from '../src/boot/qemu.ts';
import { Cache } from '../src/cache/cache.ts';
import type { Manifest } from '../src/manifest/manifest.ts';
import { buildTestAgent } from '../test/helpers/agent.ts';
import { REPO_ROOT } from '../test/helpers/cli.ts';
import { languageImageSpec } from '../test/helpers/images.ts';
import { writeOciLayout } from '../test/helpers/oci-builder.ts';
import { hasCommand } from '../test/helpers/system.ts';

const out = join(REPO_ROOT, 'out');
const layout = join(out, 'demo-image');
const agent = join(REPO_ROOT, 'agent-bin', 'x86_64', 'agent');

function step(message: string): void {
  process.stdout.write(`\n==> ${message}\n`);
}

step('compiling the demo agent (test/fixtures/agent.c) into agent-bin/x86_64/agent');
mkdirSync(join(REPO_ROOT, 'agent-bin', 'x86_64'), { recursive: true });
copyFileSync(await buildTestAgent('x86_64'), agent);

step(`generating an OCI image layout at ${layout} (busybox + a language layer)`);
rmSync(layout, { recursive: true, force: true });
await writeOciLayout(layout, languageImageSpec(), '1.0');

step('rampack build');
const args = ['build', '--image', `oci:${layout}:1.0`, '--agent', agent, '--arch', 'x86_64', '--language', 'demo', '--version', '1.0',
  '--compression', 'zstd', '--out', out, '--cache', join(out, 'cache')];
process.stdout.write(`rampack ${args.join(' ')}\n`);
const build = spawnSync(process.execPath, [join(REPO_ROOT, 'bin', 'rampack.js'), ...args], { stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
process.stdout.write(`\nwrote ${join(out, 'demo-1.0-x86_64.cpio.zst')} and ${join(out, 'manifest.json')}\n`);

if (!hasCommand(qemuCommand('x86_64'))) {
  step('qemu-system-x86_64 is not installed: skipping the boot (apt-get install qemu-system-x86 to see it boot)');
  process.exit(0);
}
const entry = (JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as Manifest).images.find((image) => image.language === 'demo')!;
step(`booting it as the manifest says (${entry.boot.cmdline}, ${entry.boot.minMemoryMiB} MiB) with Debian's stock kernel in QEMU (TCG); the agent is /init`);
const kernel = await ensureDebianKernel('x86_64', new Cache());
const boot = await bootInitramfs({
  arch: 'x86_64',
  kernel,
  initrd: join(out, entry.file),
  kernelParameters: entry.boot.cmdline.split(' '),
  memoryMiB: entry.boot.minMemoryMiB,
  agentArgs: ['image', ';;', 'run', 'lang-hello', ';;', 'run', 'uname', '-sr'],
  onOutput: (chunk) => process.stdout.write(chunk),
});
step(boot.output.includes('RAMPACK-AGENT done') ? `booted and ran in ${(boot.durationMs / 1000).toFixed(1)} s` : 'the boot did not finish');
process.exit(boot.output.includes('RAMPACK-AGENT done') ? 0 : 1);
