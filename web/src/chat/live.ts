/**
 * Tabs share running answers instead of each opening its own connection (a browser allows
 * only 6 HTTP/1.1 connections per origin across all its tabs).
 *
 * - One tab follows an answer: the holder of the Web Lock named after it. It posts every
 *   snapshot on a BroadcastChannel; the other tabs show those and open nothing.
 * - The others wait on the lock. When the following tab closes or reloads, the browser
 *   releases its lock and the next waiter resumes the answer from the newest snapshot it
 *   has (its event id says where), so the answer goes on, once.
 * - Without Web Locks (an old browser, an insecure origin) every tab follows on its own.
 */
import type { GenerationSnapshot } from '../lib/generation';

const CHANNEL = 'sluice.chat.live';

type Message = { kind: 'snapshot'; snapshot: GenerationSnapshot };

/** The channel between the tabs of this origin. */
export class LiveChannel {
  private readonly channel: BroadcastChannel | null;

  constructor(onSnapshot: (snapshot: GenerationSnapshot) => void) {
    this.channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL) : null;
    if (this.channel) {
      this.channel.onmessage = (event: MessageEvent<Message>) => {
        if (event.data?.kind === 'snapshot') onSnapshot(event.data.snapshot);
      };
    }
  }

  /** Tells the other tabs how an answer this tab follows stands. */
  post(snapshot: GenerationSnapshot): void {
    this.channel?.postMessage({ kind: 'snapshot', snapshot } satisfies Message);
  }

  close(): void {
    this.channel?.close();
  }
}

function lockName(answerId: string): string {
  return `sluice.answer.${answerId}`;
}

/** Whether this browser can coordinate tabs with Web Locks. */
export function haveLocks(): boolean {
  return typeof navigator !== 'undefined' && 'locks' in navigator && navigator.locks !== undefined;
}

/**
 * Takes the lock of an answer this tab has just started and holds it until `finished`
 * resolves. (Nobody else can hold it yet: the answer is new.)
 */
export function holdAnswer(answerId: string, finished: Promise<unknown>): void {
  if (!haveLocks()) return;
  void navigator.locks.request(lockName(answerId), () => finished.then(() => undefined, () => undefined));
}

/**
 * Waits until no other tab follows the answer, then calls `follow` and holds the lock until
 * the promise it returns resolves. Aborting `signal` stops waiting (the answer ended).
 */
export function awaitAnswer(answerId: string, signal: AbortSignal, follow: () => Promise<unknown>): void {
  if (!haveLocks()) {
    void follow();
    return;
  }
  navigator.locks
    .request(lockName(answerId), { signal }, () => (signal.aborted ? undefined : follow().then(() => undefined, () => undefined)))
    .catch(() => undefined);
}
