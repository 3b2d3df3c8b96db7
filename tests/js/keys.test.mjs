// API keys with limits as a client meets them, through the official OpenAI SDK: keys made
// with `sluice keys create` (the admin API), a key past its requests per minute is a
// RateLimitError carrying Retry-After, and with two nodes on one Redis a key made on one
// node works on the other, its token budget spent on one is spent on both, and a key revoked
// on one is refused by the other.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import OpenAI, { AuthenticationError, RateLimitError } from 'openai';

import { nodesOnOneRedis, sluice, startHub, waitFor } from './hub.mjs';

const ADMIN = 'admin-key-for-tests';
const MESSAGES = [{ role: 'user', content: 'hi' }];
const SCRIPTED = {
  SLUICE_SCRIPTED_TEXT: 'one two three four',
  SLUICE_SCRIPTED_TOKENS_PER_SECOND: '0',
  SLUICE_SCRIPTED_TTFT_MS: '0',
};

function node(store) {
  return startHub({ store, args: ['--provider', 'scripted', '--admin-key', ADMIN], env: SCRIPTED });
}

/** Makes a key through the CLI; its record, with the key. */
async function createKey(hub, name, ...limits) {
  const out = await sluice(['keys', '--url', hub.origin, '--admin-key', ADMIN, 'create', name, ...limits]);
  return JSON.parse(out);
}

function client(hub, apiKey) {
  return new OpenAI({ baseURL: `${hub.origin}/v1`, apiKey, maxRetries: 0 });
}

function ask(openai) {
  return openai.chat.completions.create({ model: 'scripted', messages: MESSAGES });
}

/** What key `name` used, as node `hub` reports it (`GET /admin/usage`). */
async function usageOf(hub, name) {
  const res = await fetch(`${hub.origin}/admin/usage`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(res.status, 200);
  const { keys } = await res.json();
  return keys.find((k) => k.name === name);
}

describe('a key with limits, one node', () => {
  let hub;
  after(() => hub?.stop());

  test('past its requests per minute the SDK gets a RateLimitError with Retry-After', async () => {
    hub = await node('memory');
    const { key } = await createKey(hub, 'team', '--rpm', '2');
    const openai = client(hub, key);
    for (let i = 0; i < 2; i++) {
      const answer = await ask(openai);
      assert.equal(answer.choices[0].message.content, 'one two three four');
    }
    await assert.rejects(ask(openai), (err) => {
      assert.ok(err instanceof RateLimitError, `a RateLimitError, got ${err}`);
      assert.equal(err.status, 429);
      const retry = Number(err.headers.get('retry-after'));
      assert.ok(retry >= 1 && retry <= 60, `Retry-After until the next minute: ${retry}`);
      assert.equal(err.code, 'rate_limit_exceeded');
      assert.match(err.message, /requests per minute/);
      return true;
    });
    await assert.rejects(ask(client(hub, 'sk-wrong')), AuthenticationError);
  });
});

describe('a key on two nodes sharing one Redis', () => {
  let cluster;
  after(() => cluster?.stop());

  test('a budget spent on one node is spent on the other, and a revocation holds on both', async () => {
    cluster = await nodesOnOneRedis(2, node);
    const [a, b] = cluster.nodes;
    const { key } = await createKey(a, 'shared', '--budget', '5', '--period', 'day');

    // Made on a, known on b; b's answer spends the budget (5 tokens: the prompt and four).
    const answer = await ask(client(b, key));
    assert.equal(answer.choices[0].message.content, 'one two three four');
    await waitFor(async () => (await usageOf(a, 'shared'))?.period_tokens >= 5, {
      what: "b's answer to be spent, as a reads it",
    });
    await assert.rejects(ask(client(a, key)), (err) => {
      assert.ok(err instanceof RateLimitError, `a RateLimitError, got ${err}`);
      assert.match(err.message, /token budget/);
      assert.ok(Number(err.headers.get('retry-after')) >= 1);
      return true;
    });

    const { key: other } = await createKey(b, 'other');
    await ask(client(a, other));
    await sluice(['keys', '--url', b.origin, '--admin-key', ADMIN, 'revoke', 'other']);
    await assert.rejects(ask(client(a, other)), AuthenticationError);
  });
});
