/**
 * A hub subscription read with `fetch`: every event type (an `EventSource` only delivers
 * types it listens for by name), an `Authorization` header, and reconnection with
 * `Last-Event-ID` after a drop, counted so the console can show it.
 */
import { type SseEvent, SseParser } from '../lib/sse';

/** The connection's state. */
export type SubscriptionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** What the subscription tells its owner. */
export interface SubscriptionCallbacks {
  onEvent: (event: SseEvent) => void;
  onState: (state: SubscriptionState, detail: string) => void;
}

/** Which protocol version a subscription speaks, and so how its matchers are sent. */
export type Matching = 'draft-07' | 'draft-08-exact' | 'draft-08-urlpattern';

/** The query parameter that carries each matcher. */
const PARAMETER: Record<Matching, string> = {
  'draft-07': 'topic',
  'draft-08-exact': 'match',
  'draft-08-urlpattern': 'match_urlpattern',
};

/** Subscribes to `matchers` on the hub at `hubUrl` until {@link close}. */
export class HubSubscription {
  private readonly abort = new AbortController();
  private readonly parser: SseParser;
  private retryMs = 1000;
  private closed = false;

  constructor(
    private readonly hubUrl: string,
    private readonly matchers: string[],
    private readonly matching: Matching,
    private readonly token: string,
    lastEventId: string,
    private readonly callbacks: SubscriptionCallbacks,
  ) {
    this.parser = new SseParser(callbacks.onEvent, (ms) => {
      this.retryMs = ms;
    });
    void this.run(lastEventId);
  }

  /** Stops for good. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.callbacks.onState('closed', 'unsubscribed');
  }

  private url(): string {
    const url = new URL(this.hubUrl, location.href);
    for (const matcher of this.matchers) url.searchParams.append(PARAMETER[this.matching], matcher);
    return url.toString();
  }

  private async run(initialLastEventId: string): Promise<void> {
    let first = true;
    while (!this.closed) {
      const cursor = this.parser.lastEventId || (first ? initialLastEventId : '');
      this.callbacks.onState(first ? 'connecting' : 'reconnecting', cursor ? `Last-Event-ID: ${cursor}` : '');
      const headers: Record<string, string> = { Accept: 'text/event-stream' };
      if (cursor) headers['Last-Event-ID'] = cursor;
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      let detail = '';
      try {
        const response = await fetch(this.url(), { headers, cache: 'no-store', signal: this.abort.signal });
        const type = response.headers.get('content-type') ?? '';
        if (response.status !== 200 || !type.startsWith('text/event-stream') || !response.body) {
          const body = await response.text().catch(() => '');
          let message = body;
          try {
            message = (JSON.parse(body) as { error?: { message?: string } }).error?.message ?? body;
          } catch {
            // not JSON
          }
          const permanent = response.status >= 400 && response.status < 500 && response.status !== 429;
          detail = `${response.status} ${response.statusText} ${message}`.trim();
          if (permanent || response.status === 204) {
            this.closed = true;
            this.callbacks.onState('closed', detail);
            return;
          }
        } else {
          // Each version names the resumed cursor in its own header.
          const resumed = response.headers.get('mercure-last-event-id') ?? response.headers.get('last-event-id');
          this.callbacks.onState('open', resumed ? `resumed after ${resumed}` : '');
          this.parser.reset();
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            this.parser.push(value);
          }
          detail = 'the stream ended';
        }
      } catch (error) {
        if (this.closed) return;
        detail = `connection failed (${error instanceof Error ? error.message : String(error)})`;
      }
      first = false;
      if (this.closed) return;
      this.callbacks.onState('reconnecting', `${detail}; retrying in ${(this.retryMs / 1000).toFixed(1)} s`);
      await new Promise((resolve) => setTimeout(resolve, this.retryMs));
    }
  }
}
