/**
 * The worker threads that write shards of the image's archive (see
 * archive-worker.ts), one job per worker at a time, started on first use and
 * shared by one build's speculative and final jobs. Jobs run in the order
 * they were queued; queued jobs that are no longer wanted can be withdrawn.
 */
import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Cache } from '../cache/cache.ts';
import { siblingModuleUrl } from '../util/source-identity.ts';
import type { ShardJob, ShardResult } from './shards.ts';

interface QueuedJob {
  job: ShardJob;
  resolve: (result: ShardResult) => void;
  reject: (error: unknown) => void;
}

/** The worker module; its code identity is part of every shard key (archive.ts). */
export function shardWorkerUrl(): URL {
  return siblingModuleUrl(import.meta.url, 'archive-worker');
}

export class ShardWorkers {
  readonly #cache: Cache;
  readonly #size: number;
  readonly #queue: QueuedJob[] = [];
  readonly #idle: Worker[] = [];
  readonly #workers = new Set<Worker>();
  #dir?: Promise<string>;
  #closed = false;

  /** Shard files go to a fresh temporary directory in the cache, removed by close(). */
  constructor(cache: Cache, size = availableParallelism()) {
    this.#cache = cache;
    this.#size = size;
  }

  /** Where a shard with this name is written. */
  async outputPath(name: string): Promise<string> {
    this.#dir ??= this.#cache.temporaryDirectory('shards');
    return join(await this.#dir, name);
  }

  /** Queues a job; its result says whether it failed (or was withdrawn). */
  run(job: ShardJob): Promise<ShardResult> {
    if (this.#closed) return Promise.resolve({ index: job.index, error: { message: 'the shard workers are closed' } });
    const result = new Promise<ShardResult>((resolve, reject) => this.#queue.push({ job, resolve, reject }));
    this.#dispatch();
    return result;
  }

  /** Drops the queued jobs `keep` rejects; they resolve as failed. Running jobs finish. */
  withdraw(keep: (job: ShardJob) => boolean): void {
    for (let i = this.#queue.length - 1; i >= 0; i--) {
      const queued = this.#queue[i]!;
      if (keep(queued.job)) continue;
      this.#queue.splice(i, 1);
      queued.resolve({ index: queued.job.index, error: { message: 'withdrawn: no longer part of the archive' } });
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.withdraw(() => false);
    // Busy workers too: what they write now is not wanted any more.
    await Promise.all([...this.#workers].map((worker) => worker.terminate()));
    if (this.#dir) await rm(await this.#dir, { recursive: true, force: true });
  }

  #dispatch(): void {
    while (this.#queue.length > 0) {
      const worker = this.#idle.pop() ?? this.#startWorker();
      if (worker === undefined) return;
      this.#runOn(worker, this.#queue.shift()!);
    }
  }

  #startWorker(): Worker | undefined {
    if (this.#workers.size >= this.#size) return undefined;
    const worker = new Worker(shardWorkerUrl(), { resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    this.#workers.add(worker);
    return worker;
  }

  #runOn(worker: Worker, queued: QueuedJob): void {
    const onMessage = (result: ShardResult) => {
      worker.off('error', onError);
      queued.resolve(result);
      this.#idle.push(worker);
      this.#dispatch();
    };
    const onError = (error: Error) => {
      worker.off('message', onMessage);
      this.#workers.delete(worker);
      queued.reject(error);
      this.#dispatch();
    };
    worker.once('message', onMessage);
    worker.once('error', onError);
    worker.postMessage(queued.job);
  }
}
