// End-user tokens as a browser's code meets them, through the official OpenAI SDK in its
// browser mode (`dangerouslyAllowBrowser`, the token as `apiKey`): tokens minted with
// `sluice token --chat`, an answer held to the token's max tokens, a model it was not granted
// refused, its requests per minute a RateLimitError, a forged or other-audience token an
// AuthenticationError saying why; and with two nodes on one Redis, a subject's requests per
// minute spent on one node are spent on the other. With --jwt-public-key, an RS256 token
// that a back end signs with its own RSA key (node:crypto, no Sluice code) is taken, and one
// signed with another key refused.

import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import OpenAI, { AuthenticationError, PermissionDeniedError, RateLimitError } from 'openai';
import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS } from './chromium.mjs';
import { nodesOnOneRedis, sluice, startHub, tempDir } from './hub.mjs';

const SECRET = 'end-user-secret-for-tests';
const AUDIENCE = 'sluice-chat';
const MESSAGES = [{ role: 'user', content: 'hi' }];
const SCRIPTED = {
  SLUICE_SCRIPTED_TEXT: 'one two three four',
  SLUICE_SCRIPTED_TOKENS_PER_SECOND: '0',
  SLUICE_SCRIPTED_TTFT_MS: '0',
};

function node(store) {
  const args = ['--provider', 'scripted', '--chat-audience', AUDIENCE];
  return startHub({ store, secret: SECRET, args, env: SCRIPTED });
}

/** An end-user token for `subject`, minted as a back end would with the CLI. */
function mint(subject, { secret = SECRET, audience = AUDIENCE, limits = [] } = {}) {
  const args = ['token', '--secret', secret, '--chat', '--chat-audience', audience];
  return sluice([...args, '--subject', subject, '--ttl', '300', ...limits]);
}

function browser(hub, token) {
  return new OpenAI({ baseURL: `${hub.origin}/v1`, apiKey: token, dangerouslyAllowBrowser: true, maxRetries: 0 });
}

function ask(openai, extra = {}) {
  return openai.chat.completions.create({ model: 'scripted', messages: MESSAGES, ...extra });
}

/** Runs `round(subject)`, again for a fresh subject should it fail in a minute that turned
 * meanwhile (the limits' window is a fixed minute; it cannot turn twice in a few seconds). */
async function withinOneMinute(prefix, round) {
  for (let i = 0; i < 2; i++) {
    const minute = Math.floor(Date.now() / 60_000);
    try {
      return await round(`${prefix}-${i}`);
    } catch (err) {
      if (Math.floor(Date.now() / 60_000) === minute) throw err;
    }
  }
  throw new Error('the minute turned during both rounds');
}

describe('an end-user token, one node', () => {
  let hub;
  after(() => hub?.stop());

  test('an answer is held to the max tokens, and only granted models answer', async () => {
    hub = await node('memory');
    const token = await mint('alice', { limits: ['--models', 'scripted', '--max-tokens', '2'] });
    const answer = await ask(browser(hub, token));
    assert.equal(answer.usage.completion_tokens, 2);
    assert.equal(answer.choices[0].finish_reason, 'length');
    const more = await ask(browser(hub, token), { max_tokens: 50 });
    assert.equal(more.usage.completion_tokens, 2, 'a larger max_tokens is clamped to the grant');

    const narrow = await mint('alice', { limits: ['--models', 'gpt-4o-mini'] });
    await assert.rejects(ask(browser(hub, narrow)), (err) => {
      assert.ok(err instanceof PermissionDeniedError, `a PermissionDeniedError, got ${err}`);
      assert.equal(err.code, 'model_not_allowed');
      return true;
    });
  });

  test('past its requests per minute the SDK gets a RateLimitError', async () => {
    await withinOneMinute('bob', async (subject) => {
      const openai = browser(hub, await mint(subject, { limits: ['--rpm', '2'] }));
      await ask(openai);
      await ask(openai);
      await assert.rejects(ask(openai), (err) => {
        assert.ok(err instanceof RateLimitError, `a RateLimitError, got ${err}`);
        assert.ok(Number(err.headers.get('retry-after')) >= 1);
        assert.match(err.message, new RegExp(`end user ${subject} reached its requests per minute`));
        return true;
      });
    });
  });

  test('a forged or other-audience token is an AuthenticationError that says why', async () => {
    const forged = await mint('mallory', { secret: 'not-the-secret' });
    await assert.rejects(ask(browser(hub, forged)), (err) => {
      assert.ok(err instanceof AuthenticationError, `an AuthenticationError, got ${err}`);
      assert.match(err.message, /signature does not verify/);
      return true;
    });
    const elsewhere = await mint('mallory', { audience: 'another-app' });
    await assert.rejects(ask(browser(hub, elsewhere)), /audience \(aud\) is not this server/);
  });
});

/** An RS256 JWT of `claims` signed with `privateKey`, as any JWT library makes one. */
function signRs256(claims, privateKey) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const signed = `${part({ alg: 'RS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${sign('sha256', Buffer.from(signed), privateKey).toString('base64url')}`;
}

describe('an end-user token signed with RS256', () => {
  let hub;
  let keys;
  after(async () => {
    await hub?.stop();
    await keys?.remove();
  });

  test("a back end's own RSA key signs tokens the server takes; another key's are refused", async () => {
    const pair = () => generateKeyPairSync('rsa', { modulusLength: 2048 });
    const [ours, theirs] = [pair(), pair()];
    keys = await tempDir('rs256');
    const publicPem = path.join(keys.dir, 'public.pem');
    await writeFile(publicPem, ours.publicKey.export({ type: 'spki', format: 'pem' }));
    const args = ['--provider', 'scripted', '--chat-audience', AUDIENCE, '--jwt-public-key', publicPem];
    hub = await startHub({ store: 'memory', args, env: SCRIPTED });

    const claims = {
      sub: 'erin',
      aud: AUDIENCE,
      exp: Math.floor(Date.now() / 1000) + 300,
      sluice: { chat: { models: ['scripted'], max_tokens: 3 } },
    };
    const answer = await ask(browser(hub, signRs256(claims, ours.privateKey)));
    assert.equal(answer.usage.completion_tokens, 3, 'held to the max tokens the token grants');
    assert.equal(answer.choices[0].message.content, 'one two three');

    await assert.rejects(ask(browser(hub, signRs256(claims, theirs.privateKey))), (err) => {
      assert.ok(err instanceof AuthenticationError, `an AuthenticationError, got ${err}`);
      assert.match(err.message, /signature does not verify/);
      return true;
    });
    // An HS256 token is not taken by a server that verifies RS256.
    await assert.rejects(ask(browser(hub, await mint('erin'))), AuthenticationError);
  });
});

describe('an end-user token on two nodes sharing one Redis', () => {
  let cluster;
  after(() => cluster?.stop());

  test("a subject's requests per minute spent on one node are spent on the other", async () => {
    cluster = await nodesOnOneRedis(2, node);
    const [a, b] = cluster.nodes;
    await withinOneMinute('carol', async (subject) => {
      const token = await mint(subject, { limits: ['--rpm', '2'] });
      await ask(browser(a, token));
      await ask(browser(b, token));
      await assert.rejects(ask(browser(a, token)), RateLimitError);
      await assert.rejects(ask(browser(b, token)), RateLimitError);
    });
  });
});

describe('an end-user token in a browser', () => {
  let hub;
  let profile;
  let context;
  after(async () => {
    await context?.close();
    await hub?.stop();
    await profile?.remove();
  });

  test('the cookie carries it: EventSource and fetch answers are held to its max tokens and models', async () => {
    hub = await node('memory');
    profile = await tempDir('chromium-end-users');
    context = await chromium.launchPersistentContext(profile.dir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    });
    const token = await mint('dana', { limits: ['--models', 'scripted', '--max-tokens', '2'] });
    const host = new URL(hub.origin).hostname;
    await context.addCookies([{ name: 'sluiceChatToken', value: token, domain: host, path: '/' }]);
    const page = await context.newPage();
    await page.goto(`${hub.origin}/healthz`);

    const streamed = await page.evaluate(
      () =>
        new Promise((resolve, reject) => {
          const texts = [];
          const source = new EventSource('/api/chat/stream?prompt=hi&model=scripted');
          source.onmessage = (event) => {
            const text = JSON.parse(event.data).choices?.[0]?.delta?.content;
            if (text) texts.push(text);
          };
          source.addEventListener('end', (event) => {
            source.close();
            resolve({ texts, end: JSON.parse(event.data) });
          });
          source.onerror = () => {
            source.close();
            reject(new Error(`the stream failed after ${texts.length} pieces`));
          };
        }),
    );
    // Two tokens of the script (pieces may be merged for a slow reader, as answers allow).
    assert.equal(streamed.texts.join(''), 'one two', JSON.stringify(streamed));
    assert.equal(streamed.end.finish_reason, 'length');

    // The page's code sets the cookie as a back end's answer would: a token for another model.
    const narrow = await mint('dana', { limits: ['--models', 'gpt-4o-mini'] });
    const answers = await page.evaluate(async (narrow) => {
      const ask = () =>
        fetch('/v1/chat/completions', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'scripted', messages: [{ role: 'user', content: 'hi' }] }),
        }).then(async (res) => ({ status: res.status, body: await res.json() }));
      const granted = await ask();
      document.cookie = `sluiceChatToken=${narrow}; path=/`;
      return [granted, await ask()];
    }, narrow);
    assert.equal(answers[0].status, 200);
    assert.equal(answers[0].body.usage.completion_tokens, 2);
    assert.equal(answers[1].status, 403);
    assert.equal(answers[1].body.error.code, 'model_not_allowed');
  });
});
