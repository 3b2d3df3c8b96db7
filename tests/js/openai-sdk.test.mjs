// The gateway seen by the official OpenAI SDK for JavaScript (the `openai` npm package):
// `sluice serve --provider scripted` answers with a known text, which the SDK must hand back
// exactly, streamed or whole; its errors must surface as the SDK's typed errors; and a reader
// that aborts mid-answer must cancel the upstream (sluice_upstream_cancelled_total).

import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import OpenAI, { APIError, AuthenticationError, InternalServerError, NotFoundError } from 'openai';

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
const MESSAGES = [
  { role: 'system', content: 'Answer briefly.' },
  { role: 'user', content: PROMPT },
];

/** The scripted provider's settings: the text above, as fast as it can. */
const FAST = {
  SLUICE_SCRIPTED_TEXT: TEXT,
  SLUICE_SCRIPTED_TOKENS_PER_SECOND: '0',
  SLUICE_SCRIPTED_TTFT_MS: '0',
};

function scriptedHub({ env = {}, args = [] } = {}) {
  return startHub({ store: 'memory', args: ['--provider', 'scripted', ...args], env: { ...FAST, ...env } });
}

function client(hub, options = {}) {
  return new OpenAI({ baseURL: `${hub.origin}/v1`, apiKey: 'unused', ...options });
}

/** Reads every chunk of a streamed completion. */
async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

/** The text of the choice chunks, joined. */
function textOf(chunks) {
  return chunks
    .filter((c) => c.choices.length > 0)
    .map((c) => c.choices[0].delta.content ?? '')
    .join('');
}

/** The value of an unlabelled counter in Prometheus' text format (0 when absent). */
function counter(metrics, name) {
  const line = metrics.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').pop()) : 0;
}

function assertUsage(usage) {
  assert.ok(usage, 'usage is present');
  assert.ok(usage.prompt_tokens > 0, `prompt_tokens: ${JSON.stringify(usage)}`);
  assert.ok(usage.completion_tokens > 0, `completion_tokens: ${JSON.stringify(usage)}`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

describe('the official openai SDK against the scripted model', () => {
  let hub;
  let openai;
  before(async () => {
    hub = await scriptedHub();
    openai = client(hub);
  });
  after(() => hub?.stop());

  let streamedUsage;

  test('a streamed completion with include_usage reassembles the exact text', async () => {
    const stream = await openai.chat.completions.create({
      model: 'scripted',
      messages: MESSAGES,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = await collect(stream);
    const log = () => JSON.stringify(chunks, null, 1);

    assert.equal(textOf(chunks), EXPECTED, log());
    for (const chunk of chunks) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      assert.equal(chunk.id, chunks[0].id, 'every chunk has the same id');
      assert.equal(chunk.model, 'scripted');
    }
    assert.match(chunks[0].id, /^chatcmpl-/);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');

    const withChoices = chunks.filter((c) => c.choices.length > 0);
    const lastChoice = withChoices.at(-1).choices[0];
    assert.equal(lastChoice.finish_reason, 'stop', log());
    for (const chunk of withChoices.slice(0, -1)) {
      assert.equal(chunk.choices[0].finish_reason, null, 'only the last choice chunk finishes');
      assert.equal(chunk.usage, null, 'usage is null before the usage chunk');
    }

    // The usage chunk: the last one, with no choices.
    const usageChunk = chunks.at(-1);
    assert.deepEqual(usageChunk.choices, [], log());
    assert.equal(chunks.filter((c) => c.choices.length === 0).length, 1, 'one usage chunk');
    assertUsage(usageChunk.usage);
    streamedUsage = usageChunk.usage;
  });

  test('a streamed completion without include_usage has no usage chunk', async () => {
    const stream = await openai.chat.completions.create({ model: 'scripted', messages: MESSAGES, stream: true });
    const chunks = await collect(stream);
    assert.equal(textOf(chunks), EXPECTED);
    assert.ok(chunks.every((c) => c.choices.length === 1 && c.usage == null), JSON.stringify(chunks));
  });

  test("the SDK's stream helper accumulates the same completion", async () => {
    const runner = openai.chat.completions.stream({ model: 'scripted', messages: MESSAGES });
    let deltas = '';
    runner.on('content', (delta) => (deltas += delta));
    const completion = await runner.finalChatCompletion();
    assert.equal(deltas, EXPECTED);
    assert.equal(completion.choices[0].message.content, EXPECTED);
    assert.equal(completion.choices[0].message.role, 'assistant');
    assert.equal(completion.choices[0].finish_reason, 'stop');
  });

  test('a non-streamed completion has the exact text and usage', async () => {
    const completion = await openai.chat.completions.create({ model: 'scripted', messages: MESSAGES });
    assert.equal(completion.object, 'chat.completion');
    assert.match(completion.id, /^chatcmpl-/);
    assert.equal(completion.model, 'scripted');
    assert.equal(completion.choices.length, 1);
    assert.equal(completion.choices[0].message.role, 'assistant');
    assert.equal(completion.choices[0].message.content, EXPECTED);
    assert.equal(completion.choices[0].finish_reason, 'stop');
    assertUsage(completion.usage);
    if (streamedUsage) assert.deepEqual(completion.usage, streamedUsage, 'the same usage streamed or not');
  });

  test('max_tokens cuts the answer with finish_reason length', async () => {
    const completion = await openai.chat.completions.create({ model: 'scripted', messages: MESSAGES, max_tokens: 3 });
    const text = completion.choices[0].message.content;
    assert.ok(text.length > 0 && EXPECTED.startsWith(text) && text !== EXPECTED, JSON.stringify(text));
    assert.equal(completion.choices[0].finish_reason, 'length');
    assert.equal(completion.usage.completion_tokens, 3);
  });

  test('models.list() names the scripted model', async () => {
    const ids = [];
    for await (const model of openai.models.list()) ids.push(model.id);
    assert.ok(ids.includes('scripted'), JSON.stringify(ids));
  });

  test('an unknown model is a NotFoundError (404) with the server message, streamed or not', async () => {
    for (const stream of [false, true]) {
      await assert.rejects(
        openai.chat.completions.create({ model: 'no-such-model', messages: MESSAGES, stream }),
        (err) => {
          assert.ok(err instanceof NotFoundError, `stream: ${stream}: ${err}`);
          assert.equal(err.status, 404);
          assert.equal(err.code, 'model_not_found');
          assert.equal(err.param, 'model');
          assert.match(err.message, /^404 The model `no-such-model` does not exist/);
          return true;
        },
      );
    }
  });
});

describe('the official openai SDK and API keys', () => {
  let hub;
  before(async () => {
    hub = await scriptedHub({ args: ['--api-key', 'sk-good'] });
  });
  after(() => hub?.stop());

  test('a wrong key is an AuthenticationError (401)', async () => {
    const wrong = client(hub, { apiKey: 'sk-wrong' });
    await assert.rejects(wrong.chat.completions.create({ model: 'scripted', messages: MESSAGES }), (err) => {
      assert.ok(err instanceof AuthenticationError, String(err));
      assert.equal(err.status, 401);
      assert.equal(err.code, 'invalid_api_key');
      return true;
    });
    await assert.rejects(wrong.models.list(), AuthenticationError);
  });

  test('the right key works, streamed and listing models', async () => {
    const right = client(hub, { apiKey: 'sk-good' });
    const chunks = await collect(
      await right.chat.completions.create({ model: 'scripted', messages: MESSAGES, stream: true }),
    );
    assert.equal(textOf(chunks), EXPECTED);
    const page = await right.models.list();
    assert.ok(page.data.some((m) => m.id === 'scripted'), JSON.stringify(page.data));
  });
});

describe('the official openai SDK and an upstream that fails mid-answer', () => {
  let hub;
  before(async () => {
    hub = await scriptedHub({ env: { SLUICE_SCRIPTED_FAIL_AFTER: '3' } });
  });
  after(() => hub?.stop());

  test("the stream's iteration throws an APIError after some text", async () => {
    const stream = await client(hub).chat.completions.create({ model: 'scripted', messages: MESSAGES, stream: true });
    let text = '';
    await assert.rejects(
      (async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
      })(),
      (err) => {
        assert.ok(err instanceof APIError, String(err));
        assert.match(err.message, /scripted failure after 3 tokens/);
        return true;
      },
    );
    assert.ok(text.length > 0, 'some text came before the failure');
    assert.ok(EXPECTED.startsWith(text) && text !== EXPECTED, JSON.stringify(text));
  });

  test('a non-streamed answer that fails is a 5xx APIError', async () => {
    const noRetry = client(hub, { maxRetries: 0 });
    await assert.rejects(noRetry.chat.completions.create({ model: 'scripted', messages: MESSAGES }), (err) => {
      assert.ok(err instanceof InternalServerError, String(err));
      assert.ok(err.status >= 500, String(err.status));
      return true;
    });
  });
});

describe('the official openai SDK aborting mid-answer', () => {
  let hub;
  before(async () => {
    // A long answer, slowly: the abort comes long before its end.
    hub = await scriptedHub({
      env: { SLUICE_SCRIPTED_TEXT: 'word '.repeat(400), SLUICE_SCRIPTED_TOKENS_PER_SECOND: '20' },
    });
  });
  after(() => hub?.stop());

  async function cancelled() {
    const res = await fetch(`${hub.origin}/metrics`);
    return counter(await res.text(), 'sluice_upstream_cancelled_total');
  }

  async function waitCancelled(n) {
    let last;
    await waitFor(async () => (last = await cancelled()) >= n, {
      timeout: 60_000,
      interval: 100,
      what: `sluice_upstream_cancelled_total >= ${n}`,
      describe: () => `sluice_upstream_cancelled_total ${last}\n${hub.log()}`,
    });
  }

  test('stream.controller.abort() cancels the upstream', async () => {
    assert.equal(await cancelled(), 0);
    const stream = await client(hub).chat.completions.create({ model: 'scripted', messages: MESSAGES, stream: true });
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (text.length > 0) stream.controller.abort();
    }
    assert.ok(text.startsWith('word') && text.length < 400 * 5, JSON.stringify(text));
    await waitCancelled(1);
  });

  test('an AbortSignal cancels the upstream', async () => {
    const before = await cancelled();
    const abort = new AbortController();
    const stream = await client(hub).chat.completions.create(
      { model: 'scripted', messages: MESSAGES, stream: true },
      { signal: abort.signal },
    );
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (text.length > 0) abort.abort();
    }
    assert.ok(text.startsWith('word') && text.length < 400 * 5, JSON.stringify(text));
    await waitCancelled(before + 1);
  });
});

describe('the official openai SDK against the built-in local model', () => {
  const model = fileURLToPath(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url));
  let hub;
  before(async () => {
    hub = await startHub({ store: 'memory', args: ['--provider', 'local', '--model', model] });
  });
  after(() => hub?.stop());

  test('a greedy streamed answer is non-empty and the same twice', async () => {
    const openai = client(hub);
    const ask = async () => {
      const stream = await openai.chat.completions.create({
        model: 'smollm2-135m',
        messages: [{ role: 'user', content: 'Name one colour.' }],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: 16,
        temperature: 0,
      });
      const chunks = await collect(stream);
      assertUsage(chunks.at(-1).usage);
      return textOf(chunks);
    };
    const first = await ask();
    assert.ok(first.trim().length > 0, 'the model said something');
    assert.equal(await ask(), first, 'greedy decoding is deterministic');
  });
});
