/**
 * `verify --boot` on a slim variant, the proof that slimming kept what the
 * workload needs: the probe (src/boot/check.ts) runs the smoke command and
 * every slim.workload command, with the workload's files at
 * /.rampack-probe/workload, in the memory `rampack slim` gives them (the
 * entry's boot.minMemoryMiB plus WORKLOAD_HEADROOM_MIB). When a command fails
 * there, the image boots once more with the tracer in "missing" mode
 * (src/slim/tracer.ts) running the commands up to that one, and the paths it
 * looked up in vain that the full image has are reported: what the slim
 * image lacks. Full images run the smoke command only.
 */
import { checkBoot, type BootCheck, type BootCheckOptions, type BootFailure, type BootTarget } from '../boot/check.ts';
import { imagePaths, missingFromSlim, runTracer, workloadHelperFiles, WORKLOAD_HEADROOM_MIB, WORKLOAD_TIMEOUT_SECONDS, type Workload } from './tracer.ts';

/** Boots a target as `verify --boot` does; a slim variant also runs `workload` (the recipe's slim section) when given. */
export async function checkImageBoot(target: BootTarget, options: BootCheckOptions, workload: Workload | undefined): Promise<BootCheck> {
  if (target.variant !== 'slim') return checkBoot(target, options);
  const withWorkload: BootCheckOptions =
    workload === undefined
      ? options
      : {
          ...options,
          timeoutMs: options.timeoutMs ?? WORKLOAD_TIMEOUT_SECONDS * 1000,
          workload: { commands: workload.workload, files: await workloadHelperFiles(workload.workloadFiles), headroomMiB: WORKLOAD_HEADROOM_MIB },
        };
  const check = await checkBoot(target, withWorkload);
  // The last command that started is the one that failed; one that never finished (a crash, a timeout) has no lookups to blame.
  const kind = check.failure?.kind;
  const exit = check.runs.at(-1)?.exit;
  if ((kind !== 'smoke' && kind !== 'workload-command') || exit === undefined || exit === null) return check;
  return { ...check, failure: await withMissingPaths(check, target, withWorkload, workload) };
}

/** The failure, with what the slim image lacks for the failed command (a second boot, under the tracer). */
async function withMissingPaths(check: BootCheck, target: BootTarget, options: BootCheckOptions, workload: Workload | undefined): Promise<BootFailure> {
  const failure = check.failure!;
  if (target.fullFile === undefined) {
    return { ...failure, message: `${failure.message} (verify the manifest with the full image's entry to learn which paths the slim image lacks)` };
  }
  const run = await runTracer({
    arch: target.arch,
    kernel: options.kernel,
    initramfs: target.file,
    cmdline: check.cmdline,
    commands: check.runs.map((ran) => ran.command),
    ...(workload?.workloadFiles === undefined ? {} : { workloadFiles: workload.workloadFiles }),
    mode: 'missing',
    cacheDir: options.cacheDir,
    memoryMiB: check.memoryMiB,
    timeoutMs: options.timeoutMs ?? WORKLOAD_TIMEOUT_SECONDS * 1000,
    onOutput: options.onConsole,
  });
  const missing = missingFromSlim(run, await imagePaths(target.fullFile));
  const found = missing.length > 0 ? `missing from the slim image: ${missing.join(', ')}` : 'the tracer saw it look up no path the full image has and the slim one lacks';
  return { ...failure, message: `${failure.message}; ${found}`, missing };
}
