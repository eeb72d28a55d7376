/**
 * Slim variants of a compiled language's image: an image built like the
 * official golang image from Debian packages (test/helpers/interpreter-image.ts:
 * the base with perl and python as buildpack-deps:scm has them, Go 1.19 at
 * /usr/local/go with its sources and precompiled packages, gcc and binutils
 * for cgo). `rampack slim` traces `go build`, the built service and
 * `go test` (which runs vet, and compiles runtime/cgo with gcc) under QEMU;
 * the slim image keeps the toolchain and the standard library's sources but
 * only the precompiled packages the workload used, as Go >= 1.20 images ship
 * none. Then a program the workload never compiled (other packages, cgo)
 * compiles and runs in the slim image, and `rampack build` makes the same
 * slim bytes from the trace without booting.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureDebianKernel } from '../../src/boot/kernel.ts';
import type { Manifest } from '../../src/manifest/manifest.ts';
import { readTraceFile } from '../../src/slim/trace-file.ts';
import { buildTestAgent } from '../helpers/agent.ts';
import { REPO_ROOT, runRampack } from '../helpers/cli.ts';
import { KERNEL_CACHE } from '../helpers/debian.ts';
import { golangImageSpec, writeGolangSlimRecipe } from '../helpers/interpreter-image.ts';
import { writeOciLayout } from '../helpers/oci-builder.ts';
import { ensureTools, TOOLS } from '../helpers/system.ts';
import { runInSlimImage } from '../helpers/slim-run.ts';
import { testDirectory } from '../helpers/temp.ts';

const work = testDirectory('slim-go');
const cache = join(work, 'cache');
const traced = join(work, 'traced');
let kernel: string;
let recipe: string;
/** rampack runs that boot VMs compiling Go under TCG: minutes alone, bounded so that a hung VM fails the test. */
const BOOTING_RUN = { deadlineMs: 1_200_000 };

beforeAll(async () => {
  ensureTools(TOOLS.qemuX86);
  kernel = await ensureDebianKernel('x86_64', KERNEL_CACHE);
  const layout = join(work, 'layout');
  await writeOciLayout(layout, golangImageSpec());
  recipe = await writeGolangSlimRecipe(join(work, 'recipe'), layout, await buildTestAgent('x86_64'));
}, 600_000);

async function manifestOf(out: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8')) as Manifest;
}

describe('rampack slim on a Go image from Debian packages', () => {
  it('traces go build, the service and go test; the slim variant unpacks to at most half and boots in less memory', async () => {
    const result = await runRampack(['slim', recipe, '--out', traced, '--cache', cache, '--kernel', kernel], BOOTING_RUN);
    expect(result.stderr).toContain('every command passed in the slim image');
    expect(result.code).toBe(0);
    const manifest = await manifestOf(traced);
    const [full, slim] = [manifest.images.find((i) => !i.variant)!, manifest.images.find((i) => i.variant === 'slim')!];
    expect(slim.uncompressedSize).toBeLessThanOrEqual(full.uncompressedSize / 2);
    expect(slim.boot.minMemoryMiB).toBeLessThan(full.boot.minMemoryMiB);

    const trace = await readTraceFile(join(work, 'recipe', 'traces', 'go-1.19-x86_64.trace'));
    expect(trace.manifestDigest).toBe(full.source.manifestDigest);
    // The compiler and linker the go command ran, the packages it linked, and cgo's C compiler (go test builds runtime/cgo).
    expect(trace.paths).toEqual(expect.arrayContaining([
      'usr/lib/go-1.19/bin/go', 'usr/lib/go-1.19/pkg/tool/linux_amd64/compile', 'usr/lib/go-1.19/pkg/tool/linux_amd64/link',
      'usr/lib/go-1.19/pkg/linux_amd64/net/http.a', 'usr/lib/gcc/x86_64-linux-gnu/12/cc1',
    ]));
    expect(trace.paths.some((path) => path.startsWith('usr/bin/perl') || path.startsWith('usr/lib/python3'))).toBe(false);
  }, 1_500_000);

  it('compiles and runs a standard-library program the workload never compiled (other packages, cgo) in the slim image', async () => {
    const slim = (await manifestOf(traced)).images.find((image) => image.variant === 'slim')!;
    const run = await runInSlimImage({
      image: slim,
      out: traced,
      commands: [['sh', '-c', 'cd /.rampack-probe/workload && go run .']],
      workloadFiles: join(REPO_ROOT, 'test', 'fixtures', 'slim-go'),
      mode: 'trace',
      kernel,
      cacheDir: cache,
      timeoutMs: 1_200_000,
    });
    expect(run.output).toContain('other program ok <item name="slim"></item> hello from zip ok via text/template <b>&lt;escaped&gt;</b> 2 1 true root');
    expect(run.exits).toEqual([0]);
  }, 1_500_000);

  it('builds the same slim bytes from the committed trace without booting', async () => {
    const rebuilt = join(work, 'rebuilt');
    const result = await runRampack(['build', recipe, '--out', rebuilt, '--cache', cache]);
    expect(result.code, result.stderr).toBe(0);
    for (const file of ['go-1.19-x86_64-slim.cpio.zst', 'go-1.19-x86_64.cpio.zst']) {
      expect((await readFile(join(rebuilt, file))).equals(await readFile(join(traced, file))), file).toBe(true);
    }
  }, 600_000);
});
