// Answers as Durable Streams, through `@durable-streams/aisdk-transport` (the AI SDK's
// ChatTransport over Durable Streams, as `useChat` calls it): a message sent to
// /api/durable-chat is read from the Durable Stream it points to; a reload in the middle
// (the reading request aborted, then the transport's reconnectToStream) replays the answer
// from its first chunk to its end exactly once; stop ends it with `abort`; a reconnect after
// the end finds nothing to resume. On two nodes of one Redis: sent to one, resumed on another.

import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'vitest';
import { createDurableChatTransport } from '@durable-streams/aisdk-transport';

import { startHub, startRedis, waitFor } from '../js/hub.mjs';

const WORDS = Array.from({ length: 40 }, (_, i) => `word${i}`);
const TEXT = WORDS.join(' ');

const cleanups = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** A node answering TEXT at 40 tokens a second, so an answer runs about a second. */
async function node(store = 'memory') {
  const hub = await startHub({
    store,
    args: ['--provider', 'scripted'],
    env: { SLUICE_SCRIPTED_TEXT: TEXT, SLUICE_SCRIPTED_TOKENS_PER_SECOND: '40' },
  });
  cleanups.push(() => hub.stop());
  return hub;
}

const message = (text) => ({ id: `m-${Math.random()}`, role: 'user', parts: [{ type: 'text', text }] });

function send(transport, chatId, abortSignal) {
  return transport.sendMessages({
    trigger: 'submit-message',
    chatId,
    messageId: undefined,
    messages: [message('tell me')],
    abortSignal,
  });
}

/** Reads chunks until the stream ends, or until `stopWhen(chunks)` says enough. */
async function read(stream, stopWhen = () => false) {
  const chunks = [];
  const reader = stream.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    if (stopWhen(chunks)) break;
  }
  return chunks;
}

const text = (chunks) => chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');
const deltas = (n) => (chunks) => chunks.filter((c) => c.type === 'text-delta').length >= n;

describe('@durable-streams/aisdk-transport', () => {
  test('a reload mid-answer resumes it from its first chunk to its end, exactly once', async () => {
    const hub = await node();
    const transport = createDurableChatTransport({ api: `${hub.origin}/api/durable-chat` });
    const page = new AbortController();
    const before = await read(await send(transport, 'chat-1', page.signal), deltas(5));
    page.abort(); // the page reloads
    assert.equal(before[0].type, 'start');
    assert.ok(text(before).length < TEXT.length, 'the reload came mid-answer');

    const resumed = await transport.reconnectToStream({ chatId: 'chat-1' });
    assert.ok(resumed, 'the running answer is found');
    const all = await read(resumed);
    assert.equal(text(all), TEXT);
    assert.equal(all[0].type, 'start');
    assert.equal(all[0].messageId, before[0].messageId);
    assert.deepEqual(all.at(-1), { type: 'finish', finishReason: 'stop' });
    // Ended: nothing to resume.
    assert.equal(await transport.reconnectToStream({ chatId: 'chat-1' }), null);
  });

  test('stop cancels the answer and its stream ends with abort', async () => {
    const hub = await node();
    const transport = createDurableChatTransport({ api: `${hub.origin}/api/durable-chat` });
    const stream = await send(transport, 'chat-2');
    const reader = stream.getReader();
    const chunks = [];
    while (text(chunks).split(' ').length < 3) chunks.push((await reader.read()).value);
    const stopped = await fetch(`${hub.origin}/api/durable-chat/chat-2/stop`, { method: 'POST' });
    assert.deepEqual(await stopped.json(), { id: 'chat-2', stopped: true });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    assert.equal(chunks.at(-1).type, 'abort');
    assert.ok(text(chunks).length < TEXT.length, 'the answer was cut short');
    assert.ok(TEXT.startsWith(text(chunks)));
    assert.equal(await transport.reconnectToStream({ chatId: 'chat-2' }), null);
  });

  test('sent to one node, resumed on another', async () => {
    const redis = await startRedis();
    cleanups.push(redis.stop);
    const [a, b] = [await node(redis.url), await node(redis.url)];
    const onA = createDurableChatTransport({ api: `${a.origin}/api/durable-chat` });
    const onB = createDurableChatTransport({ api: `${b.origin}/api/durable-chat` });
    const page = new AbortController();
    await read(await send(onA, 'chat-3', page.signal), deltas(3));
    page.abort();
    const resumed = await waitFor(() => onB.reconnectToStream({ chatId: 'chat-3' }), {
      what: 'node B to find the running answer',
    });
    const all = await read(resumed);
    assert.equal(text(all), TEXT);
    assert.equal(all.at(-1).type, 'finish');
  });
});
