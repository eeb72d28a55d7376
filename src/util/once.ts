/**
 * Runs an async task once per key while it is pending or has succeeded, so
 * concurrent callers share one download; a failed task may be asked for again.
 */
export class OncePerKey<T> {
  private readonly tasks = new Map<string, Promise<T>>();

  run(key: string, task: () => Promise<T>): Promise<T> {
    let pending = this.tasks.get(key);
    if (!pending) {
      pending = task();
      this.tasks.set(key, pending);
      pending.catch(() => this.tasks.delete(key));
    }
    return pending;
  }
}
