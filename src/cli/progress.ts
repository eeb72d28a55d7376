/**
 * How a build's progress is shown. In a terminal: a listr2 task view on
 * stderr, one task per image with a subtask per stage (bytes and rate while
 * pulling, entry counts, compression ratio, elapsed times). In CI, with
 * --quiet or --verbose, or when stderr is not a terminal: plain timestamped
 * lines (lineLogger), never a spinner or an escape code.
 */
import type { DefaultRenderer, ListrTaskWrapper } from 'listr2';
import {
  BUILD_STAGES,
  formatBytes,
  formatDuration,
  lineLogger,
  type BuildReporter,
  type BuildStage,
  type Logger,
  type LoggerOptions,
  type StageProgress,
} from '../util/log.ts';

export interface OutputFlags extends LoggerOptions {
  json?: boolean;
}

/** One image's work; it reports its stages through `reporter`. */
export interface ImageJob {
  label: string;
  /** The stages it reports, in order (default: a build's). */
  stages?: readonly BuildStage[];
  run(reporter: BuildReporter): Promise<void>;
}

export interface Output {
  /** Whether the task view is used (otherwise plain lines). */
  taskView: boolean;
  log: Logger;
  runJobs(jobs: readonly ImageJob[]): Promise<void>;
}

/** CI systems set CI (GitHub Actions, GitLab, Buildkite, Jenkins via plugins...). */
function isCI(): boolean {
  const ci = process.env.CI;
  return ci !== undefined && ci !== '' && ci !== 'false' && ci !== '0';
}

/** The task view needs a real terminal on stderr and someone watching it. */
export function wantsTaskView(flags: LoggerOptions): boolean {
  return process.stderr.isTTY === true && process.env.TERM !== 'dumb' && !isCI() && !flags.quiet && !flags.verbose;
}

/**
 * listr2 colors with util.styleText, which asks whether stdout is a terminal;
 * the task view is drawn on stderr, which is (`--json > file` redirects only
 * stdout). NO_COLOR and an explicit FORCE_COLOR still decide.
 */
function colorsFollowStderr(): void {
  if (process.env.NO_COLOR === undefined && process.env.FORCE_COLOR === undefined && !process.stdout.isTTY) process.env.FORCE_COLOR = '1';
}

export function createOutput(flags: OutputFlags): Output {
  if (!wantsTaskView(flags)) {
    const log = lineLogger(flags);
    return { taskView: false, log, runJobs: (jobs) => runWithLines(jobs, log) };
  }
  // Under the task view only warnings are logged: listr2 holds them back while it draws and prints them after.
  const log = lineLogger({ quiet: true });
  colorsFollowStderr();
  return { taskView: true, log, runJobs: runWithTaskView };
}

/** Times each stage and remembers its latest progress, to show rates. */
class StageClock {
  readonly #started = new Map<BuildStage, number>();
  readonly #latest = new Map<BuildStage, StageProgress>();

  start(stage: BuildStage): void {
    this.#started.set(stage, performance.now());
  }

  note(stage: BuildStage, progress: StageProgress): void {
    this.#latest.set(stage, progress);
  }

  elapsedMs(stage: BuildStage): number {
    return performance.now() - (this.#started.get(stage) ?? performance.now());
  }

  /** "12.0 MiB / 40.0 MiB, 4.0 MiB/s" or "1234 entries". */
  describe(stage: BuildStage): string {
    const progress = this.#latest.get(stage);
    if (progress === undefined) return '';
    if (progress.unit === 'entries') return `${progress.done} entries`;
    const total = progress.total ? ` / ${formatBytes(progress.total)}` : '';
    return `${formatBytes(progress.done)}${total}${this.#rate(stage)}`;
  }

  /** ", 4.0 MiB/s" for a byte stage that moved bytes, else "". */
  #rate(stage: BuildStage): string {
    const progress = this.#latest.get(stage);
    const seconds = this.elapsedMs(stage) / 1000;
    if (progress?.unit !== 'bytes' || progress.done === 0 || seconds <= 0) return '';
    return `, ${formatBytes(Math.round(progress.done / seconds))}/s`;
  }

  /** The stage's end line: its summary, the rate of a byte stage, and how long it took. */
  finish(stage: BuildStage, summary: string): string {
    return `${summary}${this.#rate(stage)} in ${formatDuration(this.elapsedMs(stage))}`;
  }
}

/** Plain lines: one per finished stage, starts only with --verbose; no per-chunk lines. */
export function lineReporter(label: string, log: Logger): BuildReporter {
  const clock = new StageClock();
  return {
    start(stage) {
      clock.start(stage);
      log.debug(`${label}: ${stage} started`);
    },
    progress: (stage, progress) => clock.note(stage, progress),
    end: (stage, summary) => log.info(`${label}: ${stage}: ${clock.finish(stage, summary)}`),
  };
}

async function runWithLines(jobs: readonly ImageJob[], log: Logger): Promise<void> {
  for (const job of jobs) {
    const started = performance.now();
    await job.run(lineReporter(job.label, log));
    log.info(`${job.label}: done in ${formatDuration(performance.now() - started)}`);
  }
}

/** How often a running stage's title is redrawn at most. */
const REDRAW_INTERVAL_MS = 100;

type StageTask = ListrTaskWrapper<unknown, typeof DefaultRenderer, typeof DefaultRenderer>;

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  // Stages after a failed one are never awaited; their rejection must not count as unhandled.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * Bridges build events to listr2 subtasks: the job runs on its own, and each
 * stage's subtask waits for that stage's end event, retitling itself as
 * progress comes in.
 */
class StageBridge implements BuildReporter {
  readonly #clock = new StageClock();
  readonly #ended: Map<BuildStage, Deferred>;
  readonly #tasks = new Map<BuildStage, StageTask>();
  readonly #redrawn = new Map<BuildStage, number>();
  /** Titles of stages that ended before their subtask was shown. */
  readonly #titles = new Map<BuildStage, string>();

  constructor(stages: readonly BuildStage[]) {
    this.#ended = new Map(stages.map((stage) => [stage, deferred()]));
  }

  start(stage: BuildStage): void {
    this.#clock.start(stage);
  }

  progress(stage: BuildStage, progress: StageProgress): void {
    this.#clock.note(stage, progress);
    const now = performance.now();
    const task = this.#tasks.get(stage);
    if (task === undefined || now - (this.#redrawn.get(stage) ?? 0) < REDRAW_INTERVAL_MS) return;
    this.#redrawn.set(stage, now);
    task.title = `${stage}: ${this.#clock.describe(stage)}`;
  }

  end(stage: BuildStage, summary: string): void {
    const task = this.#tasks.get(stage);
    const line = `${stage}: ${this.#clock.finish(stage, summary)}`;
    if (task) task.title = line;
    else this.#titles.set(stage, line);
    this.#ended.get(stage)!.resolve();
  }

  async follow(stage: BuildStage, task: StageTask): Promise<void> {
    this.#tasks.set(stage, task);
    const early = this.#titles.get(stage);
    if (early !== undefined) task.title = early;
    await this.#ended.get(stage)!.promise;
  }

  /** The job is over: stages it did not report count as done, or all fail with its error. */
  settle(error?: unknown): void {
    for (const stage of this.#ended.values()) {
      if (error === undefined) stage.resolve();
      else stage.reject(error);
    }
  }
}

/** The task view; listr2 is loaded only here, where a terminal shows it (a CI build never pays for it). */
async function runWithTaskView(jobs: readonly ImageJob[]): Promise<void> {
  const { DefaultRenderer, Listr, ListrLogger, ProcessOutput } = await import('listr2');
  /** listr2 draws on stdout only when stdout is a terminal; this one draws on stderr and lets rampack decide. */
  class StderrTaskRenderer extends DefaultRenderer {
    static override nonTTY = true;
  }
  const tasks = new Listr<unknown, typeof DefaultRenderer, typeof DefaultRenderer>(
    jobs.map((job) => ({
      title: job.label,
      task: (_context, imageTask) => {
        const stages = job.stages ?? BUILD_STAGES;
        const bridge = new StageBridge(stages);
        const started = performance.now();
        job.run(bridge).then(
          () => {
            imageTask.title = `${job.label}: done in ${formatDuration(performance.now() - started)}`;
            bridge.settle();
          },
          (error: unknown) => bridge.settle(error),
        );
        return imageTask.newListr(
          stages.map((stage) => ({ title: stage, task: (_stageContext, stageTask) => bridge.follow(stage, stageTask) })),
          { concurrent: false, exitOnError: true },
        );
      },
    })),
    {
      renderer: StderrTaskRenderer,
      fallbackRenderer: StderrTaskRenderer,
      exitOnError: true,
      rendererOptions: {
        logger: new ListrLogger({ useIcons: true, processOutput: new ProcessOutput(process.stderr, process.stderr) }),
        collapseSubtasks: false,
        collapseErrors: false,
      },
    },
  );
  await tasks.run();
}
