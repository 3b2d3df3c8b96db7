// The OpenAI Responses API (/v1/responses) seen by the official OpenAI SDK for JavaScript (the
// `openai` npm package), against `sluice serve --provider scripted`: a streamed response
// reassembles the scripted text exactly; a background response read part-way, left, and resumed
// with `responses.retrieve(id, { stream: true, starting_after })` gives the text once, with no
// gap and no repeat; `responses.cancel` stops the upstream (sluice_upstream_cancelled_total).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI, { NotFoundError } from 'openai';

import { startHub, waitFor } from './hub.mjs';

// Chinese, emoji (with ZWJ sequences and a flag), markdown, a tab, CRLF and LF, a trailing
// newline, and the prompt echoed back in the middle.
const TEXT =
  '# 你好，Sluice 👋\n\n' +
  'Here is **bold**, _italic_ and `code`; 中文：流式传输测试。\n' +
  '- emoji: 🚀🎉 👨‍👩‍👧‍👦 🇫🇷\n' +
  '- a tab\there,  two spaces\r\n' +
  '```js\nconsole.log("hi");\n```\n' +
  'You said: {prompt} — done.\n';
const PROMPT = 'Ça va? 日本語 🙂';
const EXPECTED = TEXT.replace('{prompt}', PROMPT);
const INSTRUCTIONS = 'Answer briefly.';

const DELTA = 'response.output_text.delta';
const TERMINAL = new Set(['response.completed', 'response.incomplete', 'response.failed']);

function client(hub) {
  return new OpenAI({ baseURL: `${hub.origin}/v1`, apiKey: 'unused', timeout: 60_000 });
}

/** `n` distinct word tokens: echoed at 20 tokens a second, an answer of n/20 seconds. */
function words(n) {
  return Array.from({ length: n }, (_, i) => `w${i}`).join(' ');
}

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

/** The events of `stream` until `n` text deltas have come; then the client leaves (aborts). */
async function readDeltas(stream, n) {
  const events = [];
  for await (const event of stream) {
    events.push(event);
    if (deltas(events) >= n) break; // breaking out of for-await aborts the request
  }
  return events;
}

const deltas = (events) => events.filter((e) => e.type === DELTA).length;
const textOf = (events) =>
  events
    .filter((e) => e.type === DELTA)
    .map((e) => e.delta)
    .join('');

function assertOrdered(events) {
  const numbers = events.map((e) => e.sequence_number);
  for (let i = 1; i < numbers.length; i++) {
    assert.ok(numbers[i - 1] < numbers[i], `sequence numbers not strictly increasing: ${numbers}`);
  }
}

/** The value of an unlabelled counter in Prometheus' text format (0 when absent). */
function counter(metrics, name) {
  const line = metrics.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('the official openai SDK and the Responses API', () => {
  let fast;
  let paced;
  before(async () => {
    [fast, paced] = await Promise.all([
      startHub({
        store: 'memory',
        args: ['--provider', 'scripted'],
        env: { SLUICE_SCRIPTED_TEXT: TEXT, SLUICE_SCRIPTED_TOKENS_PER_SECOND: '0', SLUICE_SCRIPTED_TTFT_MS: '0' },
      }),
      // The prompt echoed at 20 tokens a second: each test picks its answer's length.
      startHub({
        store: 'memory',
        args: ['--provider', 'scripted'],
        env: {
          SLUICE_SCRIPTED_TEXT: '{prompt}',
          SLUICE_SCRIPTED_TOKENS_PER_SECOND: '20',
          SLUICE_SCRIPTED_TTFT_MS: '0',
        },
      }),
    ]);
  });
  after(() => Promise.all([fast?.stop(), paced?.stop()]));

  async function cancelled() {
    const res = await fetch(`${paced.origin}/metrics`);
    return counter(await res.text(), 'sluice_upstream_cancelled_total');
  }

  async function waitCancelled(n) {
    let last;
    await waitFor(async () => (last = await cancelled()) >= n, {
      timeout: 30_000,
      interval: 50,
      what: `sluice_upstream_cancelled_total >= ${n}`,
      describe: () => `sluice_upstream_cancelled_total ${last}\n${paced.log()}`,
    });
  }

  test('responses.create streamed reassembles the exact text, then the completed response', async () => {
    const openai = client(fast);
    const events = await collect(
      await openai.responses.create({ model: 'scripted', instructions: INSTRUCTIONS, input: PROMPT, stream: true }),
    );
    const types = events.map((e) => e.type);
    const log = () => JSON.stringify(types);

    assertOrdered(events);
    assert.equal(textOf(events), EXPECTED);
    assert.deepEqual(types.slice(0, 4), [
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
    ]);
    assert.deepEqual(types.slice(-4), [
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    assert.equal(types.filter((t) => TERMINAL.has(t)).length, 1, log());

    const { response } = events.at(-1);
    assert.match(response.id, /^resp_/);
    assert.equal(response.id, events[0].response.id);
    assert.equal(response.status, 'completed');
    assert.equal(response.output[0].content[0].text, EXPECTED);
    assert.ok(response.usage.input_tokens > 0 && response.usage.output_tokens > 0, JSON.stringify(response.usage));
    assert.equal(response.usage.total_tokens, response.usage.input_tokens + response.usage.output_tokens);

    const stored = await openai.responses.retrieve(response.id);
    assert.equal(stored.status, 'completed');
    assert.equal(stored.output_text, EXPECTED);
  });

  test("the SDK's stream helper and a whole response give the same text", async () => {
    const openai = client(fast);
    const runner = openai.responses.stream({ model: 'scripted', instructions: INSTRUCTIONS, input: PROMPT });
    let text = '';
    runner.on('response.output_text.delta', (event) => (text += event.delta));
    const final = await runner.finalResponse();
    assert.equal(text, EXPECTED);
    assert.equal(final.output_text, EXPECTED);

    const whole = await openai.responses.create({ model: 'scripted', instructions: INSTRUCTIONS, input: PROMPT });
    assert.equal(whole.object, 'response');
    assert.equal(whole.status, 'completed');
    assert.equal(whole.output_text, EXPECTED);
    assert.notEqual(whole.id, final.id);
  });

  test('a background response read part-way, left, and resumed with starting_after gives the text once', async () => {
    const openai = client(paced);
    const prompt = words(60); // 3 s of answer
    const before = await cancelled();

    const created = await openai.responses.create({ model: 'scripted', input: prompt, background: true });
    assert.match(created.id, /^resp_/);
    assert.equal(created.background, true);
    assert.ok(['queued', 'in_progress'].includes(created.status), created.status);

    const first = await readDeltas(await openai.responses.retrieve(created.id, { stream: true }), 5);
    assert.equal(first[0].type, 'response.created');
    const running = await openai.responses.retrieve(created.id);
    assert.equal(running.status, 'in_progress');

    const second = await readDeltas(
      await openai.responses.retrieve(created.id, { stream: true, starting_after: first.at(-1).sequence_number }),
      5,
    );
    assert.ok(second[0].sequence_number > first.at(-1).sequence_number);
    const third = await collect(
      await openai.responses.retrieve(created.id, { stream: true, starting_after: second.at(-1).sequence_number }),
    );

    const pieces = [...first, ...second, ...third];
    assertOrdered(pieces);
    assert.equal(textOf(pieces), prompt, 'each token exactly once');
    assert.equal(pieces.at(-1).type, 'response.completed');

    // The same events as one full replay: nothing skipped, nothing repeated.
    const whole = await collect(await openai.responses.retrieve(created.id, { stream: true }));
    const key = (e) => `${e.sequence_number} ${e.type}`;
    assert.deepEqual(pieces.map(key), whole.map(key));

    const stored = await openai.responses.retrieve(created.id);
    assert.equal(stored.status, 'completed');
    assert.equal(stored.output_text, prompt);
    assert.equal(await cancelled(), before, 'readers leaving a background response do not stop it');
  });

  test('responses.cancel stops a running background response and its upstream', async () => {
    const openai = client(paced);
    const prompt = words(2000); // 100 s: it can only end by being cancelled
    const before = await cancelled();

    const created = await openai.responses.create({ model: 'scripted', input: prompt, background: true });
    // A reader that stays while the response is cancelled: its stream ends.
    const stream = await openai.responses.retrieve(created.id, { stream: true });
    const iterator = stream[Symbol.asyncIterator]();
    const events = [];
    while (deltas(events) < 3) {
      const { value, done } = await iterator.next();
      assert.ok(!done, 'the stream went on');
      events.push(value);
    }

    const response = await openai.responses.cancel(created.id);
    assert.equal(response.id, created.id);
    assert.equal(response.status, 'cancelled');
    await waitCancelled(before + 1);

    for (let next = await iterator.next(); !next.done; next = await iterator.next()) events.push(next.value);
    assertOrdered(events);
    const text = textOf(events);
    assert.ok(text.length > 0 && prompt.startsWith(text) && text !== prompt, JSON.stringify(text));
    assert.notEqual(events.at(-1).type, 'response.completed');
    assert.ok(TERMINAL.has(events.at(-1).type), events.at(-1).type);
    assert.equal(events.at(-1).response.status, 'cancelled');

    const stored = await openai.responses.retrieve(created.id);
    assert.equal(stored.status, 'cancelled');
    assert.equal(stored.output_text, text);
  });

  test('aborting a streamed (not background) response cancels its upstream', async () => {
    const openai = client(paced);
    const before = await cancelled();
    const stream = await openai.responses.create({ model: 'scripted', input: words(2000), stream: true });
    const events = await readDeltas(stream, 2);
    await waitCancelled(before + 1);
    const id = events[0].response.id;
    let status;
    await waitFor(async () => (status = (await openai.responses.retrieve(id)).status) !== 'in_progress', {
      what: 'the left response to end',
      describe: () => status,
    });
    assert.equal(status, 'cancelled');
  });

  test('an unknown response id is a NotFoundError', async () => {
    const openai = client(fast);
    await assert.rejects(openai.responses.retrieve(`resp_${'0'.repeat(32)}`), NotFoundError);
    await assert.rejects(openai.responses.retrieve(`resp_${'0'.repeat(32)}`, { stream: true }), NotFoundError);
    await assert.rejects(openai.responses.cancel(`resp_${'0'.repeat(32)}`), NotFoundError);
  });
});
