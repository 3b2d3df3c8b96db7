import { describe, expect, it } from 'vitest';

import { type SseEvent, SseParser } from './sse';

function parse(chunks: string[]): { events: SseEvent[]; retries: number[]; parser: SseParser } {
  const events: SseEvent[] = [];
  const retries: number[] = [];
  const parser = new SseParser((e) => events.push(e), (ms) => retries.push(ms));
  for (const chunk of chunks) parser.push(chunk);
  return { events, retries, parser };
}

describe('SseParser', () => {
  it('parses ids, types and multi-line data', () => {
    const { events } = parse(['id: 1\nevent: greeting\ndata: a\ndata:b\n\n: comment\ndata: c\n\n']);
    expect(events).toEqual([
      { id: '1', type: 'greeting', data: 'a\nb' },
      { id: '1', type: 'message', data: 'c' },
    ]);
  });

  it('handles CR, LF and CRLF, split anywhere, and a leading BOM', () => {
    const text = '\ufeffdata: one\r\n\r\ndata: two\r\rdata: three\n\n';
    for (let cut = 0; cut <= text.length; cut += 1) {
      const { events } = parse([text.slice(0, cut), text.slice(cut)]);
      expect(events.map((e) => e.data)).toEqual(['one', 'two', 'three']);
    }
  });

  it('reads retry, ignores ids with NUL, and drops an unterminated event', () => {
    const { events, retries, parser } = parse(['retry: 250\nretry: x\nid: 5\nid: a\0b\ndata: d\n\ndata: half']);
    expect(retries).toEqual([250]);
    expect(events).toEqual([{ id: '5', type: 'message', data: 'd' }]);
    parser.reset();
    parser.push('data: next\n\n');
    expect(events[1]).toEqual({ id: '5', type: 'message', data: 'next' });
  });
});
