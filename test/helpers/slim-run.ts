/**
 * Running programs in a built slim entry the way its workload runs: under the
 * tracer (src/slim/tracer.ts) on x86_64, with the entry's boot.cmdline, the
 * workload's memory, and `workloadFiles` at /.rampack-probe/workload. How the
 * slim tests run a program that is not in the traced workload.
 */
import { join } from 'node:path';
import type { ManifestImage } from '../../src/manifest/manifest.ts';
import { runTracer, workloadMemoryMiB, type TracerMode, type TracerRun } from '../../src/slim/tracer.ts';

export interface SlimRun {
  /** The slim entry, and the output directory its file is in. */
  image: ManifestImage;
  out: string;
  commands: string[][];
  workloadFiles: string;
  mode: TracerMode;
  kernel: string;
  cacheDir: string;
  timeoutMs: number;
}

export function runInSlimImage({ image, out, commands, workloadFiles, mode, kernel, cacheDir, timeoutMs }: SlimRun): Promise<TracerRun> {
  return runTracer({
    arch: 'x86_64',
    kernel,
    initramfs: join(out, image.file),
    cmdline: image.boot.cmdline,
    commands,
    workloadFiles,
    mode,
    cacheDir,
    memoryMiB: workloadMemoryMiB(image),
    timeoutMs,
  });
}
