/**
 * What `verify --boot` boots: every entry of a manifest (the exact file it
 * names, with its boot contract and agent digest), or initramfs files given
 * on their own.
 */
import { stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../errors.ts';
import { ARCHES, type Arch } from '../oci/content.ts';
import { readInitramfs } from '../inspect/initramfs.ts';
import { MANIFEST_FILE, readManifest, type ManifestImage } from '../manifest/manifest.ts';
import type { BootTarget } from './check.ts';

async function manifestTargets(manifestPath: string): Promise<BootTarget[]> {
  const manifest = await readManifest(manifestPath);
  if (manifest.images.length === 0) throw new InputError(`manifest ${manifestPath} lists no images`, { hint: 'run rampack build first' });
  const fileOf = (image: ManifestImage) => join(dirname(manifestPath), image.file);
  const fullOf = (image: ManifestImage) =>
    manifest.images.find((full) => full.variant === undefined && full.language === image.language && full.version === image.version && full.arch === image.arch);
  return manifest.images.map((image) => {
    const full = image.variant === undefined ? undefined : fullOf(image);
    return {
      label: `${image.language} ${image.version} ${image.arch}${image.variant ? ` ${image.variant}` : ''}`,
      file: fileOf(image),
      arch: image.arch,
      language: image.language,
      boot: image.boot,
      agentSha256: image.agent.sha256,
      ...(image.variant === undefined ? {} : { variant: image.variant }),
      ...(full === undefined ? {} : { fullFile: fileOf(full) }),
    };
  });
}

/** An initramfs file on its own: its arch from `arch`, else from its /etc/rampack/image.json. */
async function fileTarget(file: string, arch: Arch | undefined): Promise<BootTarget> {
  const image = (await readInitramfs(file)).imageJson as { language?: string; version?: string; arch?: string; variant?: 'slim' } | undefined;
  const chosen = arch ?? image?.arch;
  if (!ARCHES.includes(chosen as Arch)) {
    throw new InputError(`cannot tell the architecture of ${file}: it has no /etc/rampack/image.json naming one`, { hint: 'pass --arch x86_64 or --arch aarch64' });
  }
  const variant = image?.variant === 'slim' ? { variant: image.variant } : {};
  return { label: image ? `${image.language} ${image.version} ${chosen}${image.variant ? ` ${image.variant}` : ''}` : basename(file), file, arch: chosen as Arch, language: image?.language, ...variant };
}

/** The targets of manifests (or their directories) and initramfs files, in the order given. */
export async function bootTargets(paths: readonly string[], arch: Arch | undefined): Promise<BootTarget[]> {
  const targets: BootTarget[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => {
      throw new InputError(`${path} does not exist`, { hint: 'pass out/manifest.json, an output directory, or an initramfs file' });
    });
    const manifestPath = info.isDirectory() ? join(path, MANIFEST_FILE) : path;
    if (info.isDirectory() || path.endsWith('.json')) targets.push(...(await manifestTargets(manifestPath)));
    else targets.push(await fileTarget(path, arch));
  }
  return targets;
}
