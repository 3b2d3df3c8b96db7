/**
 * An SSE parser (WHATWG rules) for streams read with `fetch`, where `EventSource` will not
 * do: it only delivers event types one listens for by name, and cannot send headers. The
 * hub console needs to see every type and to send `Authorization`.
 */

/** One dispatched event. */
export interface SseEvent {
  /** The last event id in force when it was dispatched ('' if none). */
  id: string;
  /** The event type (`message` when the stream named none). */
  type: string;
  /** The data, lines joined with LF. */
  data: string;
}

/** Feeds decoded text in, calls back per event and per `retry:` field. */
export class SseParser {
  private buffer = '';
  private data: string[] = [];
  private type = '';
  private lastId = '';
  private seenCr = false;
  private first = true;

  constructor(
    private readonly onEvent: (event: SseEvent) => void,
    private readonly onRetry: (ms: number) => void = () => undefined,
  ) {}

  /** The last event id in force (what a reconnection sends as `Last-Event-ID`). */
  get lastEventId(): string {
    return this.lastId;
  }

  /** Parses more text; lines may be split anywhere between calls. */
  push(chunk: string): void {
    if (this.first && chunk.length > 0) {
      this.first = false;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    // A CR ending the last chunk and a LF starting this one are one line end.
    if (this.seenCr && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.seenCr = false;
    this.buffer += chunk;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf('\r', start);
      const lf = this.buffer.indexOf('\n', start);
      if (cr < 0 && lf < 0) break;
      const end = cr < 0 ? lf : lf < 0 ? cr : Math.min(cr, lf);
      this.line(this.buffer.slice(start, end));
      if (this.buffer[end] === '\r') {
        if (end + 1 === this.buffer.length) {
          this.seenCr = true;
          start = end + 1;
          break;
        }
        start = this.buffer[end + 1] === '\n' ? end + 2 : end + 1;
      } else {
        start = end + 1;
      }
    }
    this.buffer = this.buffer.slice(start);
  }

  /** Forgets a half-received event (a connection ended); keeps the last event id. */
  reset(): void {
    this.buffer = '';
    this.data = [];
    this.type = '';
    this.seenCr = false;
    this.first = true;
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.onRetry(Number(value));
        break;
      default:
        break;
    }
  }

  private dispatch(): void {
    if (this.data.length === 0) {
      this.type = '';
      return;
    }
    const event = { id: this.lastId, type: this.type || 'message', data: this.data.join('\n') };
    this.data = [];
    this.type = '';
    this.onEvent(event);
  }
}
