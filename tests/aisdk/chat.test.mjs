// The AI SDK's useChat (npm `ai` + `@ai-sdk/react`, DefaultChatTransport, resume: true) against a
// real `sluice serve`, in Debian's chromium driven by playwright-core. The page (src/main.js) is
// built once with vite and served by a small static server on another origin than Sluice's, so
// Sluice's CORS (--cors-origins) is part of what is tested. Three answers in one chat:
// (a) the text grows and ends as the scripted text exactly once; (b) a reload mid-answer resumes
// it (GET /api/chat/{id}/stream) to the exact text once; (c) Stop (POST /api/chat/{id}/stop, then
// the hook's stop()) cancels the upstream, the text stops growing and nothing is left to resume.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

// How every browser test here starts Debian's chromium (Node built-ins only).
import { CHROMIUM, CHROMIUM_ARGS } from '../js/chromium.mjs';
import { startRedis } from '../js/hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../..');
const SLUICE_BIN = path.resolve(here, process.env.SLUICE_BIN ?? '../../target/debug/sluice');
const ARTIFACTS = path.resolve(process.env.ARTIFACTS_DIR ?? path.join(REPO, 'artifacts'));
const DIST = path.join(here, 'dist');
const VITE = path.join(here, 'node_modules/vite/bin/vite.js');

// 16 parts of 9 words (144 tokens) at 20 tokens a second: an answer lasts some 7 s. Line
// breaks and characters outside ASCII check that the text arrives to the byte; every part is
// numbered, so a lost or a doubled piece shows.
const TOKENS_PER_SECOND = 20;
const TEXT = Array.from({ length: 16 }, (_, i) =>
  `Part ${i + 1}: the café's naïve river — ${i * 7} stones.` + (i % 4 === 3 ? '\n\n' : ' '),
)
  .join('')
  .trimEnd();

// Generous bounds: the machine may be busy; conditions are polled, never assumed.
const LONG = 60_000;

const run = promisify(execFile);

/** Polls `check` until it returns something truthy, which is returned. */
async function waitFor(check, { timeout = LONG, interval = 50, what = 'condition', describe } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      const seen = describe ? `; observed: ${await describe()}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${seen}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
};

/** Serves dist/ on a free port: the page's own origin. */
async function serveDist() {
  const server = http.createServer(async (req, res) => {
    const { pathname } = new URL(req.url, 'http://x');
    const file = path.join(DIST, path.normalize(pathname === '/' ? '/index.html' : decodeURIComponent(pathname)));
    if (!file.startsWith(DIST + path.sep)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  const port = await freePort();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Starts `sluice serve` (scripted model; the memory store, or `store`) allowing `pageOrigin`
 * through CORS.
 */
async function startSluice(pageOrigin, store = 'memory') {
  const port = await freePort();
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('SLUICE_')) delete env[key];
  Object.assign(env, {
    SLUICE_SCRIPTED_TEXT: TEXT,
    SLUICE_SCRIPTED_TOKENS_PER_SECOND: String(TOKENS_PER_SECOND),
    SLUICE_SCRIPTED_TTFT_MS: '100',
    RUST_LOG: 'warn',
  });
  const child = spawn(
    SLUICE_BIN,
    ['serve', '--listen', `127.0.0.1:${port}`, '--store', store, '--provider', 'scripted', '--cors-origins', pageOrigin],
    { env, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d) => {
    log = (log + d).slice(-64_000);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // Should this process end without its `after` hook (a crash, a timeout), sluice ends too.
  const reap = () => child.kill('SIGKILL');
  process.once('exit', reap);
  const origin = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`sluice serve exited (${child.exitCode}): ${log}`);
      try {
        return (await fetch(`${origin}/healthz`)).ok;
      } catch {
        return false;
      }
    },
    { timeout: 30_000, what: 'sluice serve to answer' },
  );
  return {
    origin,
    child,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      process.off('exit', reap);
    },
  };
}


/** A counter from Sluice's Prometheus metrics, summed over its labels; 0 when absent. */
async function metric(origin, name) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) total += Number(line.split(' ').pop());
  }
  return total;
}

/** What the page shows: each message's role, id and text, the hook's status, any error. */
function view(page) {
  return page.evaluate(() => ({
    status: document.querySelector('[data-testid=chat]')?.getAttribute('data-status') ?? null,
    error: document.querySelector('[data-testid=error]')?.textContent ?? null,
    messages: [...document.querySelectorAll('[data-testid=message]')].map((m) => ({
      role: m.getAttribute('data-role'),
      id: m.getAttribute('data-id'),
      text: m.textContent,
    })),
  }));
}

const assistants = (v) => v.messages.filter((m) => m.role === 'assistant');
const lastAnswer = (v) => assistants(v).at(-1)?.text ?? '';
const short = (v) => JSON.stringify({ ...v, messages: v.messages.map((m) => ({ ...m, text: m.text.slice(0, 60) + `… (${m.text.length})` })) });

describe('useChat (ai + @ai-sdk/react) against Sluice in chromium', () => {
  let site;
  let sluice;
  let browser;
  let profile;
  let page;
  let chatUrl;
  let chatId;
  const pageErrors = [];
  const requests = [];

  before(async () => {
    // One build of the page (dist/ is git-ignored).
    await run(process.execPath, [VITE, 'build', '--logLevel', 'warn'], { cwd: here });
    site = await serveDist();
    sluice = await startSluice(site.origin);
    profile = await mkdtemp(path.join(os.tmpdir(), 'sluice-aisdk-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1000, height: 900 },
      args: CHROMIUM_ARGS,
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()} (${m.location().url})`);
    });
    page.on('response', (r) => {
      if (r.url().startsWith(sluice.origin)) {
        requests.push({ method: r.request().method(), path: new URL(r.url()).pathname, status: r.status() });
      }
    });
    // The AI SDK's own ids are 16 random characters; so is this one.
    chatId = randomBytes(12).toString('base64url');
    chatUrl = `${site.origin}/?sluice=${encodeURIComponent(sluice.origin)}&chat=${chatId}`;
    await page.goto(chatUrl);
    await page.waitForSelector('[data-testid=chat][data-status=ready]');
  });

  after(async () => {
    await browser?.close().catch(() => {});
    if (profile) await rm(profile, { recursive: true, force: true });
    await sluice?.stop();
    await site?.close();
  });

  /** Types `prompt` and presses Send; resolves with the count of assistant messages before. */
  async function send(prompt) {
    const before = assistants(await view(page)).length;
    await page.locator('[data-testid=prompt]').fill(prompt);
    await page.locator('[data-testid=send]').click();
    return before;
  }

  /** Waits for the answer after `count` earlier ones to show at least `min` characters. */
  function answerAtLeast(count, min) {
    return waitFor(
      async () => {
        const v = await view(page);
        if (v.error) throw new Error(`the page shows an error: ${v.error}`);
        return assistants(v).length === count + 1 && lastAnswer(v).length >= min && v;
      },
      { what: `answer ${count + 1} to reach ${min} characters`, describe: async () => short(await view(page)) },
    );
  }

  /** Waits until the hook is ready again and the last answer is the whole scripted text. */
  function answerDone() {
    return waitFor(
      async () => {
        const v = await view(page);
        if (v.error) throw new Error(`the page shows an error: ${v.error}`);
        return v.status === 'ready' && lastAnswer(v) === TEXT && v;
      },
      { what: 'the answer to end as the scripted text', describe: async () => short(await view(page)) },
    );
  }

  test('(a) the answer grows token by token and ends as the scripted text, once', async () => {
    const earlier = await send('hello');
    const first = lastAnswer(await answerAtLeast(earlier, 1));
    const second = lastAnswer(
      await waitFor(async () => {
        const v = await view(page);
        return lastAnswer(v).length > first.length && v;
      }, { what: 'the answer to grow' }),
    );
    assert.ok(TEXT.startsWith(first), `a prefix of the text: ${JSON.stringify(first)}`);
    assert.ok(TEXT.startsWith(second), `a prefix of the text: ${JSON.stringify(second)}`);
    assert.ok(second.length < TEXT.length, 'still growing when sampled twice');

    const done = await answerDone();
    assert.deepEqual(
      done.messages.map((m) => [m.role, m.text]),
      [['user', 'hello'], ['assistant', TEXT]],
    );
    assert.ok(requests.some((r) => r.method === 'POST' && r.path === '/api/chat' && r.status === 200), JSON.stringify(requests));
    assert.deepEqual(pageErrors, []);
  });

  test('(b) a reload mid-answer resumes it to the exact text, once', async () => {
    const cancelledBefore = await metric(sluice.origin, 'sluice_upstream_cancelled_total');
    const earlier = await send('tell me more');
    const seen = await answerAtLeast(earlier, 40);
    const partial = lastAnswer(seen);
    const messageId = assistants(seen).at(-1).id;
    assert.ok(partial.length < TEXT.length, 'reloading mid-answer');
    assert.ok(TEXT.startsWith(partial));

    const resumed = page.waitForResponse(
      (r) => r.request().method() === 'GET' && r.url() === `${sluice.origin}/api/chat/${chatId}/stream`,
      { timeout: LONG },
    );
    await page.reload();
    const resume = await resumed;
    // 200 (not 204): the answer was still running when the reloaded page asked for it.
    assert.equal(resume.status(), 200);
    assert.equal(resume.headers()['x-vercel-ai-ui-message-stream'], 'v1');

    const done = await answerDone();
    assert.deepEqual(
      done.messages.map((m) => [m.role, m.text]),
      [['user', 'hello'], ['assistant', TEXT], ['user', 'tell me more'], ['assistant', TEXT]],
    );
    assert.equal(new Set(done.messages.map((m) => m.id)).size, 4, 'no message twice');
    // The same answer (its id comes from the server's `start` chunk), not a new one.
    assert.equal(assistants(done).at(-1).id, messageId);
    // A dropped connection does not stop the answer.
    assert.equal(await metric(sluice.origin, 'sluice_upstream_cancelled_total'), cancelledBefore);
    assert.deepEqual(pageErrors, []);
  });

  test('(c) Stop cancels the upstream; the text stops growing; nothing is left to resume', async () => {
    const cancelledBefore = await metric(sluice.origin, 'sluice_upstream_cancelled_total');
    const earlier = await send('and stop');
    await answerAtLeast(earlier, 30);
    const stopResponse = page.waitForResponse(
      (r) => r.request().method() === 'POST' && r.url() === `${sluice.origin}/api/chat/${chatId}/stop`,
      { timeout: LONG },
    );
    await page.locator('[data-testid=stop]').click();
    const answer = await stopResponse;
    assert.equal(answer.status(), 200);
    assert.deepEqual(await answer.json(), { id: chatId, stopped: true });

    await waitFor(async () => (await metric(sluice.origin, 'sluice_upstream_cancelled_total')) > cancelledBefore, {
      what: 'sluice_upstream_cancelled_total to rise',
    });
    await waitFor(async () => (await view(page)).status === 'ready', {
      what: 'the hook to be ready again',
      describe: async () => short(await view(page)),
    });
    const stopped = lastAnswer(await view(page));
    await sleep(1500); // some 30 tokens' time
    const later = await view(page);
    assert.equal(lastAnswer(later), stopped, 'the text stopped growing');
    assert.ok(stopped.length > 0 && stopped.length < TEXT.length, `stopped part-way: ${stopped.length} of ${TEXT.length}`);
    assert.ok(TEXT.startsWith(stopped), 'what came before the stop is exact');
    assert.equal(later.error, null);
    assert.equal(assistants(later).length, earlier + 1);

    const resume = await fetch(`${sluice.origin}/api/chat/${chatId}/stream`);
    assert.equal(resume.status, 204);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'aisdk-usechat.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);
  });

  test('(d) two nodes on Redis: started on one, a reload resumes it from the other, Stop there cancels it', async () => {
    const redis = await startRedis();
    const a = await startSluice(site.origin, redis.url);
    const b = await startSluice(site.origin, redis.url);
    try {
      const chat = randomBytes(12).toString('base64url');
      await page.goto(`${site.origin}/?sluice=${encodeURIComponent(a.origin)}&resume=${encodeURIComponent(b.origin)}&chat=${chat}`);
      await page.waitForSelector('[data-testid=chat][data-status=ready]');

      // Sent to A; after a reload mid-answer the page resumes it from B, to the exact text.
      let earlier = await send('across nodes');
      const messageId = assistants(await answerAtLeast(earlier, 40)).at(-1).id;
      const resumed = page.waitForResponse(
        (r) => r.request().method() === 'GET' && r.url() === `${b.origin}/api/chat/${chat}/stream`,
        { timeout: LONG },
      );
      await page.reload();
      assert.equal((await resumed).status(), 200, 'B finds the answer running on A');
      const done = await answerDone();
      assert.deepEqual(done.messages.map((m) => [m.role, m.text]), [['user', 'across nodes'], ['assistant', TEXT]]);
      assert.equal(assistants(done).at(-1).id, messageId);

      // Sent to A again; Stop on B cancels A's upstream.
      const cancelledBefore = await metric(a.origin, 'sluice_upstream_cancelled_total');
      earlier = await send('stop it from B');
      await answerAtLeast(earlier, 30);
      const stopped = page.waitForResponse((r) => r.url() === `${b.origin}/api/chat/${chat}/stop`, { timeout: LONG });
      await page.locator('[data-testid=stop]').click();
      assert.deepEqual(await (await stopped).json(), { id: chat, stopped: true });
      await waitFor(async () => (await metric(a.origin, 'sluice_upstream_cancelled_total')) > cancelledBefore, {
        what: "A's upstream to be cancelled",
      });
      for (const node of [a, b]) {
        assert.equal((await fetch(`${node.origin}/api/chat/${chat}/stream`)).status, 204, 'nothing left to resume');
      }
      assert.deepEqual(pageErrors, []);
    } finally {
      await a.stop();
      await b.stop();
      await redis.stop();
    }
  });
});
