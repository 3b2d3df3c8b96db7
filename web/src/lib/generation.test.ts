import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import {
  GenerationHttpError,
  type GenerationSnapshot,
  cancelGeneration,
  eventNumber,
  eventsUrlAfter,
  generationSpeed,
  resumeGeneration,
  startGeneration,
} from './generation';

const BASE = 'http://sluice.test';

/** A stand-in EventSource the test drives: open it, send it events, fail it. */
class FakeEventSource {
  static all: FakeEventSource[] = [];
  readyState = 0;
  closed = false;
  private listeners = new Map<string, ((event: Event) => void)[]>();

  constructor(readonly url: string) {
    FakeEventSource.all.push(this);
  }

  addEventListener(type: string, listener: (event: Event) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  close(): void {
    this.readyState = 2;
    this.closed = true;
  }

  private dispatch(type: string, event: Event): void {
    for (const listener of this.listeners.get(type) ?? []) listener(event);
  }

  open(): void {
    this.readyState = 1;
    this.dispatch('open', new Event('open'));
  }

  send(type: string, data: unknown, id: string): void {
    this.dispatch(type, new MessageEvent(type, { data: JSON.stringify(data), lastEventId: id }));
  }

  /** A network error: the browser reconnects (CONNECTING) or gives up (CLOSED). */
  fail(readyState: 0 | 2): void {
    this.readyState = readyState;
    this.dispatch('error', new Event('error'));
  }

  static last(): FakeEventSource {
    return FakeEventSource.all[FakeEventSource.all.length - 1];
  }
}

type FetchCall = { url: string; init?: RequestInit };

function fakeFetch(responder: (url: string, init?: RequestInit) => Response | Promise<Response>) {
  const calls: FetchCall[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    calls.push({ url: String(input), init });
    return responder(String(input), init);
  });
  return { fetch: fn as unknown as typeof fetch, calls };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

const started = {
  id: 'g1',
  events_url: '/api/generations/g1/events?token=t0k',
  cancel_url: '/api/generations/g1/cancel?token=t0k',
};

function options(fetchFn: typeof fetch, extra: Record<string, unknown> = {}) {
  return {
    baseUrl: BASE,
    fetch: fetchFn,
    eventSource: (url: string) => new FakeEventSource(url),
    ...extra,
  };
}

const request = { model: 'scripted', messages: [{ role: 'user' as const, content: 'Hi' }] };

beforeEach(() => {
  FakeEventSource.all = [];
});

afterEach(() => {
  vi.useRealTimers();
});

describe('eventNumber and eventsUrlAfter', () => {
  it('reads the counter at the end of an answer event id', () => {
    expect(eventNumber('abc.0')).toBe(0);
    expect(eventNumber('abc.17')).toBe(17);
    expect(eventNumber('nodot')).toBe(null);
    expect(eventNumber(null)).toBe(null);
  });

  it('puts the cursor in the lastEventID query parameter, keeping the token', () => {
    const url = new URL(eventsUrlAfter(started.events_url, 'g1.4', BASE));
    expect(url.pathname).toBe('/api/generations/g1/events');
    expect(url.searchParams.get('token')).toBe('t0k');
    expect(url.searchParams.get('lastEventID')).toBe('g1.4');
    expect(new URL(eventsUrlAfter(started.events_url, null, BASE)).searchParams.has('lastEventID')).toBe(false);
  });
});

describe('startGeneration', () => {
  it('posts the request, follows the events, and closes on end', async () => {
    const { fetch, calls } = fakeFetch(() => json(201, started));
    const updates: GenerationSnapshot[] = [];
    const generation = await startGeneration(request, options(fetch, { onUpdate: (s: GenerationSnapshot) => updates.push(s) }));

    expect(calls[0].url).toBe(`${BASE}/api/generations`);
    expect(calls[0].init?.method).toBe('POST');
    expect(JSON.parse(String(calls[0].init?.body))).toEqual(request);

    const source = FakeEventSource.last();
    expect(source.url).toBe(`${BASE}${started.events_url}`);
    source.open();
    source.send('delta', { text: 'Hello' }, 'g1.0');
    source.send('delta', { text: ', world' }, 'g1.1');
    source.send('usage', { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }, 'g1.2');
    source.send('end', { finish_reason: 'stop' }, 'g1.3');

    const final = await generation.done;
    expect(final.text).toBe('Hello, world');
    expect(final.status).toBe('done');
    expect(final.finishReason).toBe('stop');
    expect(final.usage?.completion_tokens).toBe(2);
    expect(final.lastEventId).toBe('g1.3');
    expect(final.connection).toBe('closed');
    expect(source.closed).toBe(true);
    expect(updates.map((u) => u.text)).toContain('Hello');
    expect(FakeEventSource.all).toHaveLength(1);
  });

  it('never applies an event twice', async () => {
    const { fetch } = fakeFetch(() => json(201, started));
    const generation = await startGeneration(request, options(fetch));
    const source = FakeEventSource.last();
    source.send('delta', { text: 'a' }, 'g1.0');
    source.send('delta', { text: 'b' }, 'g1.1');
    source.send('delta', { text: 'b' }, 'g1.1');
    source.send('delta', { text: 'a' }, 'g1.0');
    source.send('delta', { text: 'c' }, 'g1.2');
    expect(generation.snapshot.text).toBe('abc');
    expect(generation.snapshot.deltas).toBe(3);
  });

  it('throws the server error, with Retry-After for a rate limit', async () => {
    const { fetch } = fakeFetch(() =>
      json(
        429,
        { error: { message: 'slow down', type: 'rate_limit_error', param: null, code: 'rate_limit_exceeded' } },
        { 'retry-after': '7' },
      ),
    );
    const error = await startGeneration(request, options(fetch)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GenerationHttpError);
    const http = error as GenerationHttpError;
    expect(http.status).toBe(429);
    expect(http.rateLimited).toBe(true);
    expect(http.retryAfter).toBe(7);
    expect(http.code).toBe('rate_limit_exceeded');
    expect(http.message).toBe('slow down');
    expect(FakeEventSource.all).toHaveLength(0);
  });

  it('reports an unreachable server as status 0', async () => {
    const fetch = (async () => {
      throw new TypeError('Failed to fetch');
    }) as unknown as typeof globalThis.fetch;
    const error = (await startGeneration(request, options(fetch)).catch((e: unknown) => e)) as GenerationHttpError;
    expect(error.status).toBe(0);
    expect(error.type).toBe('network_error');
  });

  it('records an upstream error event, then ends with finish_reason error', async () => {
    const { fetch } = fakeFetch(() => json(201, started));
    const generation = await startGeneration(request, options(fetch));
    const source = FakeEventSource.last();
    source.send('delta', { text: 'part' }, 'g1.0');
    source.send('error', { message: 'upstream 500', type: 'server_error', code: null }, 'g1.1');
    source.send('usage', { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }, 'g1.2');
    source.send('end', { finish_reason: 'error' }, 'g1.3');
    const final = await generation.done;
    expect(final.text).toBe('part');
    expect(final.error?.message).toBe('upstream 500');
    expect(final.finishReason).toBe('error');
  });
});

describe('resumeGeneration', () => {
  it('reopens after the stored event and yields the exact text', async () => {
    const { fetch } = fakeFetch(() => json(201, started));
    const first = await startGeneration(request, options(fetch));
    FakeEventSource.last().send('delta', { text: 'one' }, 'g1.0');
    FakeEventSource.last().send('delta', { text: ' two' }, 'g1.1');
    const stored = JSON.parse(JSON.stringify(first.snapshot)) as GenerationSnapshot;
    first.close(); // the page goes away
    expect(FakeEventSource.last().closed).toBe(true);

    const resumed = resumeGeneration(stored, options(fetch));
    const source = FakeEventSource.last();
    expect(new URL(source.url).searchParams.get('lastEventID')).toBe('g1.1');
    // A server that replays from the cursor sends only what follows it.
    source.send('delta', { text: ' three' }, 'g1.2');
    source.send('end', { finish_reason: 'stop' }, 'g1.3');
    expect((await resumed.done).text).toBe('one two three');
  });

  it('returns a finished snapshot without connecting', async () => {
    const done: GenerationSnapshot = {
      id: 'g1', eventsUrl: started.events_url, cancelUrl: started.cancel_url, text: 'all', lastEventId: 'g1.5',
      status: 'done', connection: 'open', finishReason: 'stop', usage: null, error: null,
      startedAt: 0, firstTokenAt: 1, endedAt: 2, deltas: 3,
    };
    const resumed = resumeGeneration(done, options(fakeFetch(() => json(500, {})).fetch));
    expect((await resumed.done).text).toBe('all');
    expect(FakeEventSource.all).toHaveLength(0);
  });
});

describe('lost connections', () => {
  it('says reconnecting while the browser retries, and open again after', async () => {
    const { fetch } = fakeFetch(() => json(201, started));
    const generation = await startGeneration(request, options(fetch));
    const source = FakeEventSource.last();
    source.open();
    source.fail(0);
    expect(generation.snapshot.connection).toBe('reconnecting');
    source.open();
    expect(generation.snapshot.connection).toBe('open');
    expect(FakeEventSource.all).toHaveLength(1);
  });

  it('reopens with the cursor when the browser gave up on a failing server', async () => {
    vi.useFakeTimers();
    let probes = 0;
    const { fetch } = fakeFetch((url) => {
      if (url.endsWith('/api/generations')) return json(201, started);
      probes += 1;
      return json(502, { error: { message: 'bad gateway' } });
    });
    const generation = await startGeneration(request, options(fetch, { retryDelays: [100] }));
    FakeEventSource.last().send('delta', { text: 'x' }, 'g1.0');
    FakeEventSource.last().fail(2);
    await vi.waitFor(() => expect(probes).toBe(1));
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeEventSource.all).toHaveLength(2);
    expect(new URL(FakeEventSource.last().url).searchParams.get('lastEventID')).toBe('g1.0');
    FakeEventSource.last().send('delta', { text: 'y' }, 'g1.1');
    FakeEventSource.last().send('end', { finish_reason: 'stop' }, 'g1.2');
    expect((await generation.done).text).toBe('xy');
  });

  it('ends when the server says the answer ended (204) or is gone (404)', async () => {
    for (const [status, reason] of [[204, 'stop'], [404, 'error']] as const) {
      const { fetch } = fakeFetch((url) =>
        url.endsWith('/api/generations') ? json(201, started) : new Response(null, { status }),
      );
      const generation = await startGeneration(request, options(fetch));
      FakeEventSource.last().fail(2);
      const final = await generation.done;
      expect(final.status).toBe('done');
      expect(final.finishReason).toBe(reason);
      expect(final.error !== null).toBe(status === 404);
    }
  });
});

describe('cancel', () => {
  it('posts to the cancel URL and accepts 202 or 409', async () => {
    for (const status of [202, 409]) {
      const { fetch, calls } = fakeFetch(() => json(status, {}));
      await cancelGeneration(started.cancel_url, { baseUrl: BASE, fetch });
      expect(calls[0].url).toBe(`${BASE}${started.cancel_url}`);
      expect(calls[0].init?.method).toBe('POST');
    }
  });

  it('throws on a refusal', async () => {
    const { fetch } = fakeFetch(() => json(403, { error: { message: 'wrong token', type: 'permission_error' } }));
    await expect(cancelGeneration(started.cancel_url, { baseUrl: BASE, fetch })).rejects.toThrow('wrong token');
  });
});

describe('generationSpeed', () => {
  it('measures time to first token and tokens per second after it', () => {
    const s = {
      startedAt: 1000, firstTokenAt: 1250, endedAt: 3250, deltas: 5,
      usage: { prompt_tokens: 1, completion_tokens: 21, total_tokens: 22 },
    } as GenerationSnapshot;
    expect(generationSpeed(s)).toEqual({ ttftMs: 250, tokensPerSecond: 10, tokens: 21 });
    expect(generationSpeed({ ...s, firstTokenAt: null, usage: null, deltas: 0 }).tokensPerSecond).toBe(null);
  });
});
