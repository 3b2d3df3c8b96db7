/**
 * Sluice answers in the browser, with no framework: start an answer, follow it token by
 * token, resume it after a reload with no text lost or doubled, and stop it.
 *
 * ```ts
 * const generation = await startGeneration(
 *   { model: 'scripted', messages: [{ role: 'user', content: 'Hi' }] },
 *   { onUpdate: (s) => render(s.text) },
 * );
 * localStorage.answer = JSON.stringify(generation.snapshot); // after each update
 * // …after a reload:
 * resumeGeneration(JSON.parse(localStorage.answer), { onUpdate: (s) => render(s.text) });
 * ```
 *
 * How it holds together: every event of an answer carries an id (`{answer}.{n}`, n counting
 * up). A snapshot keeps the text so far and the id of the last event in it, together, so a
 * new `EventSource` opened with `lastEventID={that id}` receives exactly the rest. A browser
 * `EventSource` cannot send a `Last-Event-ID` header on a fresh connection, hence the query
 * parameter; on its own reconnects it sends the header, which the server prefers. Events
 * whose number is not past the snapshot's are ignored, so nothing is ever applied twice.
 * After `end` the stream is closed (and the server would answer a reconnect with 204).
 */

/** One message of a chat request. */
export interface ChatMessage {
  /** Who speaks. */
  role: 'system' | 'user' | 'assistant' | 'tool';
  /** What was said. */
  content: string;
}

/** The body of `POST /api/generations`: an OpenAI chat completion request. */
export interface GenerationRequest {
  /** A model id from `GET /v1/models`. */
  model: string;
  /** The conversation so far. */
  messages: ChatMessage[];
  /** Sampling temperature, 0–2. */
  temperature?: number;
  /** The most tokens to generate. */
  max_tokens?: number;
  /** Any other OpenAI parameter (`top_p`, `stop`, `seed`, …). */
  [key: string]: unknown;
}

/** What `POST /api/generations` answers with 201. */
export interface StartedGeneration {
  /** The answer's id. */
  id: string;
  /** Where to follow it (EventSource); carries the answer's capability token. */
  events_url: string;
  /** Where to POST to stop it. */
  cancel_url: string;
}

/** Token counts, as OpenAI reports them. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** Why an answer ended. */
export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'cancelled' | 'error';

/** An error the upstream reported mid-answer (OpenAI's error object). */
export interface UpstreamError {
  message: string;
  type: string;
  code: string | null;
}

/** The state of the connection that follows an answer. */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/**
 * Everything known about an answer. Plain data: store it (localStorage, a BroadcastChannel)
 * and hand it to {@link resumeGeneration} to continue exactly where it stopped.
 */
export interface GenerationSnapshot {
  /** The answer's id. */
  id: string;
  /** Where to follow it (as the server gave it, usually a path). */
  eventsUrl: string;
  /** Where to stop it. */
  cancelUrl: string;
  /** The text so far. */
  text: string;
  /** The id of the last event applied to `text` (null: none yet). */
  lastEventId: string | null;
  /** `streaming` until the `end` event (or until the server says the answer is gone). */
  status: 'streaming' | 'done';
  /** The connection (transient: a resumed snapshot starts `connecting`). */
  connection: ConnectionState;
  /** Why it ended, once it has. */
  finishReason: FinishReason | null;
  /** Token counts, sent just before `end`. */
  usage: Usage | null;
  /** An upstream failure, or the answer being gone from the server. */
  error: UpstreamError | null;
  /** When the request was sent (ms since the epoch). */
  startedAt: number;
  /** When the first text arrived. */
  firstTokenAt: number | null;
  /** When `end` arrived. */
  endedAt: number | null;
  /** How many `delta` events were applied. */
  deltas: number;
}

/** A refusal of `POST /api/generations` (or of a cancel): an HTTP status and OpenAI's error body. */
export class GenerationHttpError extends Error {
  /** The HTTP status (0: the request did not reach the server). */
  readonly status: number;
  /** OpenAI's error `type` (`rate_limit_error`, `invalid_request_error`, …). */
  readonly type: string;
  /** The machine-readable code (`rate_limit_exceeded`, `model_not_found`, …). */
  readonly code: string | null;
  /** The request parameter at fault, if any. */
  readonly param: string | null;
  /** Seconds to wait before trying again (`Retry-After`), for 429 and 503. */
  readonly retryAfter: number | null;

  constructor(
    status: number,
    message: string,
    detail: { type?: string; code?: string | null; param?: string | null; retryAfter?: number | null } = {},
  ) {
    super(message);
    this.name = 'GenerationHttpError';
    this.status = status;
    this.type = detail.type ?? (status === 0 ? 'network_error' : 'server_error');
    this.code = detail.code ?? null;
    this.param = detail.param ?? null;
    this.retryAfter = detail.retryAfter ?? null;
  }

  /** Whether this is a rate limit (try again after {@link retryAfter} seconds). */
  get rateLimited(): boolean {
    return this.status === 429;
  }
}

/** The part of `EventSource` used here, so tests and other runtimes can supply their own. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: Event) => void): void;
  close(): void;
}

/** Makes an `EventSource` for a URL. */
export type EventSourceFactory = (url: string) => EventSourceLike;

/** How to reach the server and whom to tell. */
export interface GenerationOptions {
  /** Base for the server's relative URLs (default: the page's origin). */
  baseUrl?: string;
  /** Extra headers for the POSTs, e.g. `Authorization: Bearer <api key>`. */
  headers?: Record<string, string>;
  /** `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** `EventSource` maker (default: `new EventSource(url)`). */
  eventSource?: EventSourceFactory;
  /** Called with a fresh snapshot after every change. */
  onUpdate?: (snapshot: GenerationSnapshot) => void;
  /** The clock (ms since the epoch). */
  now?: () => number;
  /** Waits before reopening a stream the browser gave up on (ms); the last one repeats. */
  retryDelays?: number[];
}

const CONNECTING = 0;
const CLOSED = 2;

/** The number at the end of an answer event's id (`{answer}.{n}`), or null. */
export function eventNumber(id: string | null | undefined): number | null {
  if (!id) return null;
  const dot = id.lastIndexOf('.');
  const n = Number(id.slice(dot + 1));
  return dot >= 0 && Number.isInteger(n) ? n : null;
}

function resolveUrl(url: string, baseUrl?: string): URL {
  const base = baseUrl ?? (typeof location !== 'undefined' ? location.href : undefined);
  return new URL(url, base);
}

/** The events URL with the resume cursor as the `lastEventID` query parameter. */
export function eventsUrlAfter(eventsUrl: string, lastEventId: string | null, baseUrl?: string): string {
  const url = resolveUrl(eventsUrl, baseUrl);
  if (lastEventId) url.searchParams.set('lastEventID', lastEventId);
  else url.searchParams.delete('lastEventID');
  return url.toString();
}

async function httpError(response: Response): Promise<GenerationHttpError> {
  let body: { error?: { message?: string; type?: string; code?: string | null; param?: string | null } } = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  const retry = response.headers.get('retry-after');
  const seconds = retry !== null && /^\d+$/.test(retry.trim()) ? Number(retry) : null;
  const detail = body.error ?? {};
  const message = detail.message ?? `${response.status} ${response.statusText}`.trim();
  return new GenerationHttpError(response.status, message, { ...detail, retryAfter: seconds });
}

/** Asks the server to start an answer. Throws {@link GenerationHttpError} when it refuses. */
export async function requestGeneration(
  request: GenerationRequest,
  options: Pick<GenerationOptions, 'baseUrl' | 'headers' | 'fetch'> = {},
): Promise<StartedGeneration> {
  const doFetch = options.fetch ?? fetch;
  let response: Response;
  try {
    response = await doFetch(resolveUrl('/api/generations', options.baseUrl).toString(), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...options.headers },
      body: JSON.stringify(request),
    });
  } catch (error) {
    throw new GenerationHttpError(0, `the server could not be reached (${String(error)})`);
  }
  if (response.status !== 201 && response.status !== 200) throw await httpError(response);
  return (await response.json()) as StartedGeneration;
}

/** Starts an answer and follows it. Throws {@link GenerationHttpError} when the server refuses. */
export async function startGeneration(
  request: GenerationRequest,
  options: GenerationOptions = {},
): Promise<Generation> {
  const startedAt = (options.now ?? Date.now)();
  const started = await requestGeneration(request, options);
  const snapshot: GenerationSnapshot = {
    id: started.id,
    eventsUrl: started.events_url,
    cancelUrl: started.cancel_url,
    text: '',
    lastEventId: null,
    status: 'streaming',
    connection: 'connecting',
    finishReason: null,
    usage: null,
    error: null,
    startedAt,
    firstTokenAt: null,
    endedAt: null,
    deltas: 0,
  };
  return new Generation(snapshot, options);
}

/**
 * Continues following an answer from a stored snapshot: only the events after its
 * `lastEventId` are received. A finished snapshot is returned as it is, with no connection.
 */
export function resumeGeneration(snapshot: GenerationSnapshot, options: GenerationOptions = {}): Generation {
  return new Generation({ ...snapshot, connection: snapshot.status === 'done' ? 'closed' : 'connecting' }, options);
}

/** Stops an answer on the server; its stream then ends with `usage` and `end` (`cancelled`). */
export async function cancelGeneration(
  cancelUrl: string,
  options: Pick<GenerationOptions, 'baseUrl' | 'headers' | 'fetch'> = {},
): Promise<void> {
  const doFetch = options.fetch ?? fetch;
  const response = await doFetch(resolveUrl(cancelUrl, options.baseUrl).toString(), {
    method: 'POST',
    headers: { ...options.headers },
  });
  // 409: it had already ended, which is what was wanted.
  if (response.status === 202 || response.status === 409) return;
  throw await httpError(response);
}

/** Time to first token, tokens per second and tokens, as far as they are known. */
export function generationSpeed(
  s: GenerationSnapshot,
  now: number = Date.now(),
): { ttftMs: number | null; tokensPerSecond: number | null; tokens: number } {
  const tokens = s.usage?.completion_tokens ?? s.deltas;
  const ttftMs = s.firstTokenAt === null ? null : Math.max(0, s.firstTokenAt - s.startedAt);
  let tokensPerSecond: number | null = null;
  if (s.firstTokenAt !== null && tokens > 1) {
    const seconds = ((s.endedAt ?? now) - s.firstTokenAt) / 1000;
    // The first token's time is the TTFT: the rate is over the tokens after it.
    if (seconds > 0) tokensPerSecond = (tokens - 1) / seconds;
  }
  return { ttftMs, tokensPerSecond, tokens };
}

/**
 * One answer being followed: one `EventSource` at a time, closed on `end` (or on
 * {@link close}). Read {@link snapshot} or pass `onUpdate`; await {@link done} for the end.
 */
export class Generation {
  /** Resolves with the final snapshot when the answer ends (not when {@link close} is called). */
  readonly done: Promise<GenerationSnapshot>;
  private current: GenerationSnapshot;
  private readonly options: GenerationOptions;
  private source: EventSourceLike | null = null;
  private stopped = false;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private resolveDone!: (snapshot: GenerationSnapshot) => void;

  constructor(snapshot: GenerationSnapshot, options: GenerationOptions = {}) {
    this.current = { ...snapshot };
    this.options = options;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    if (snapshot.status === 'done') {
      this.current.connection = 'closed';
      this.resolveDone(this.current);
    } else {
      this.open();
    }
  }

  /** The answer's state now (a copy). */
  get snapshot(): GenerationSnapshot {
    return { ...this.current };
  }

  /** Whether the answer is still streaming and followed here. */
  get active(): boolean {
    return !this.stopped && this.current.status === 'streaming';
  }

  /** Stops the answer on the server; the stream goes on to its `usage` and `end`. */
  cancel(): Promise<void> {
    return cancelGeneration(this.current.cancelUrl, this.options);
  }

  /**
   * Stops following, without stopping the answer (it goes on on the server for a grace
   * period, so another page or tab can resume it).
   */
  close(): void {
    this.stopped = true;
    this.shut();
    if (this.current.connection !== 'closed') this.update({ connection: 'closed' });
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  private update(change: Partial<GenerationSnapshot>): void {
    this.current = { ...this.current, ...change };
    this.options.onUpdate?.(this.snapshot);
  }

  private shut(): void {
    this.source?.close();
    this.source = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private open(): void {
    if (this.stopped || this.current.status === 'done') return;
    const url = eventsUrlAfter(this.current.eventsUrl, this.current.lastEventId, this.options.baseUrl);
    const make = this.options.eventSource ?? ((u: string) => new EventSource(u));
    const source = make(url);
    this.source = source;
    const mine = (handler: (event: MessageEvent) => void) => (event: Event) => {
      if (this.source === source) handler(event as MessageEvent);
    };
    source.addEventListener('open', mine(() => {
      this.attempt = 0;
      this.update({ connection: 'open' });
    }));
    source.addEventListener('delta', mine((e) => this.apply(e, (data) => {
      const text = typeof data.text === 'string' ? data.text : '';
      return {
        text: this.current.text + text,
        deltas: this.current.deltas + 1,
        firstTokenAt: this.current.firstTokenAt ?? this.now(),
      };
    })));
    source.addEventListener('usage', mine((e) => this.apply(e, (data) => ({ usage: data as unknown as Usage }))));
    source.addEventListener('end', mine((e) => this.apply(e, (data) => {
      this.shut();
      return {
        status: 'done',
        connection: 'closed',
        finishReason: (data.finish_reason as FinishReason) ?? 'stop',
        endedAt: this.now(),
      };
    })));
    // `error` is both the server's event (a MessageEvent with data) and a connection failure.
    source.addEventListener('error', mine((e) => {
      if (typeof e.data === 'string') {
        this.apply(e, (data) => ({ error: data as unknown as UpstreamError }));
      } else {
        this.lost(source);
      }
    }));
  }

  /** Applies one event unless it is not past the last one applied. */
  private apply(event: MessageEvent, change: (data: Record<string, unknown>) => Partial<GenerationSnapshot>): void {
    const n = eventNumber(event.lastEventId);
    const last = eventNumber(this.current.lastEventId);
    if (n !== null && last !== null && n <= last) return;
    let data: Record<string, unknown> = {};
    try {
      data = JSON.parse(event.data);
    } catch {
      // an event with no JSON: keep its id, change nothing else
    }
    const delta = change(data);
    this.update({ ...delta, lastEventId: event.lastEventId || this.current.lastEventId });
    if (this.current.status === 'done') this.resolveDone(this.snapshot);
  }

  /** The connection failed: the browser retries on its own, or it gave up and we find out why. */
  private lost(source: EventSourceLike): void {
    if (this.stopped || this.current.status === 'done') return;
    if (source.readyState === CONNECTING) {
      this.update({ connection: 'reconnecting' });
      return;
    }
    if (source.readyState !== CLOSED) return;
    this.shut();
    this.update({ connection: 'reconnecting' });
    void this.probe();
  }

  /**
   * An `EventSource` closes for good on any status but 200: 204 means the answer ended,
   * 403/404 that it is gone; anything else (a 502 from a proxy, a restart) is worth retrying.
   */
  private async probe(): Promise<void> {
    const doFetch = this.options.fetch ?? fetch;
    const url = eventsUrlAfter(this.current.eventsUrl, this.current.lastEventId, this.options.baseUrl);
    let status = 0;
    const abort = new AbortController();
    try {
      const response = await doFetch(url, { headers: { Accept: 'text/event-stream' }, signal: abort.signal, cache: 'no-store' });
      status = response.status;
    } catch {
      status = 0;
    } finally {
      abort.abort();
    }
    if (this.stopped || this.current.status === 'done') return;
    if (status === 204) {
      this.finish(this.current.finishReason ?? 'stop', null);
    } else if (status === 403 || status === 404 || status === 410) {
      this.finish('error', {
        message: 'This answer is no longer available on the server.',
        type: 'not_found_error',
        code: String(status),
      });
    } else {
      const delays = this.options.retryDelays ?? [1000, 2000, 4000, 8000, 15000];
      const wait = delays[Math.min(this.attempt, delays.length - 1)];
      this.attempt += 1;
      this.timer = setTimeout(() => {
        this.timer = null;
        this.open();
      }, wait);
    }
  }

  private finish(reason: FinishReason, error: UpstreamError | null): void {
    this.shut();
    this.update({
      status: 'done',
      connection: 'closed',
      finishReason: reason,
      error: error ?? this.current.error,
      endedAt: this.now(),
    });
    this.resolveDone(this.snapshot);
  }
}
