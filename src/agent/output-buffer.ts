// Buffers a process's stdout or stderr in the guest until the host pulls it
// with ReadStdout/ReadStderr. The source is paused above a high-water mark so
// a silent host never makes the guest buffer without bound.

export interface PausableSource {
  pause(): void;
  resume(): void;
}

export const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;

export class OutputBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  private ended = false;
  private paused = false;
  private waiters: Array<() => void> = [];
  private source: PausableSource | undefined;

  attach(source: PausableSource): void {
    this.source = source;
  }

  push(data: Buffer): void {
    if (this.ended || data.length === 0) return;
    this.chunks.push(data);
    this.size += data.length;
    if (this.size > HIGH_WATER && this.source && !this.paused) {
      this.paused = true;
      this.source.pause();
    }
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  /** The buffered bytes as text, without consuming them. */
  peekText(max = 64 * 1024): string {
    return Buffer.concat(this.chunks).subarray(0, max).toString();
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Waits for data or end of stream; returns up to max bytes. */
  async read(max: number, signal?: AbortSignal): Promise<{ data: Buffer; eof: boolean }> {
    while (this.size === 0 && !this.ended) {
      if (signal?.aborted) return { data: Buffer.alloc(0), eof: false };
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal?.removeEventListener("abort", done);
          resolve();
        };
        this.waiters.push(done);
        signal?.addEventListener("abort", done, { once: true });
      });
    }
    if (this.size === 0) return { data: Buffer.alloc(0), eof: true };
    const limit = Math.max(1, max);
    const parts: Buffer[] = [];
    let taken = 0;
    while (this.chunks.length > 0 && taken < limit) {
      const head = this.chunks[0]!;
      const want = limit - taken;
      if (head.length <= want) {
        parts.push(head);
        taken += head.length;
        this.chunks.shift();
      } else {
        parts.push(head.subarray(0, want));
        this.chunks[0] = head.subarray(want);
        taken += want;
      }
    }
    this.size -= taken;
    if (this.paused && this.size < LOW_WATER && this.source) {
      this.paused = false;
      this.source.resume();
    }
    return { data: parts.length === 1 ? parts[0]! : Buffer.concat(parts, taken), eof: false };
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
