// The example end to end: `next build`, a real `sluice serve` (scripted model, slow enough that
// an answer lasts several seconds), `next start` pointed at it, and Debian's chromium driven by
// playwright-core. The answer must grow token by token, show the same in a second tab, survive
// a reload with nothing lost or doubled, and stop its upstream when Stop is pressed.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

// The repository's own test helpers (Node built-ins only).
import { CHROMIUM, CHROMIUM_ARGS } from '../../../tests/js/chromium.mjs';
import { freePort } from '../../../tests/js/hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const APP = path.resolve(here, '..');
const REPO = path.resolve(APP, '../..');
const SLUICE_BIN = path.resolve(process.env.SLUICE_BIN ?? path.join(REPO, 'target/debug/sluice'));
const ARTIFACTS = path.resolve(process.env.ARTIFACTS_DIR ?? path.join(REPO, 'artifacts'));
const NEXT = path.join(APP, 'node_modules/next/dist/bin/next');

// About 300 words at 20 words a second: an answer lasts some 15 s. Line breaks and characters
// outside ASCII check that the text arrives exactly.
const TOKENS_PER_SECOND = 20;
const TEXT = Array.from({ length: 30 }, (_, i) =>
  `Part ${i + 1}: the café's naïve river runs — past ${i * 7} stones, and on.` +
  (i % 10 === 9 ? '\n\n' : ' '),
)
  .join('')
  .trimEnd();

// Generous bounds: the machine may be busy; conditions are polled, never assumed.
const LONG = 90_000;

const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

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

/** The environment for children: ours, less any SLUICE_* a developer has set, plus `extra`. */
function env(extra) {
  const out = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' };
  for (const key of Object.keys(out)) if (key.startsWith('SLUICE_')) delete out[key];
  return { ...out, ...extra };
}

/** Starts a process in its own group (so `stop()` ends whatever it started too). */
function start(command, args, options) {
  const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  const keep = (chunk) => {
    output = (output + chunk).slice(-64_000);
  };
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  let status = null;
  const exited = new Promise((resolve) => {
    const done = (value) => {
      children.delete(child);
      status = value;
      resolve(value);
    };
    child.on('exit', (code, signal) => done({ code, signal }));
    child.on('error', (err) => done({ code: null, error: err.message }));
  });
  return {
    exited,
    status: () => status,
    log: () => output,
    async stop() {
      if (status) return status;
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, 10_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** Waits until `url` answers 200, failing early if `proc` exits. */
async function untilServing(proc, url, what) {
  await waitFor(
    async () => {
      if (proc.status()) throw new Error(`${what} exited early (${JSON.stringify(proc.status())}):\n${proc.log()}`);
      try {
        const res = await fetch(url);
        await res.arrayBuffer();
        return res.status === 200;
      } catch {
        return false;
      }
    },
    { what: `${what} to answer ${url}`, describe: () => proc.log().slice(-2000) },
  );
}

/** A counter or gauge from Sluice's Prometheus metrics (summed over labels), 0 when absent. */
async function metric(origin, name) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(' ').pop());
  }
  return sum;
}

const answerText = (page) => page.locator('.answer .text').textContent();
const answerStatus = (page) => page.locator('.answer').getAttribute('data-status');

/** Types a prompt and sends it. */
async function ask(page, prompt) {
  await page.getByLabel('Prompt').fill(prompt);
  await page.getByRole('button', { name: 'Send' }).click();
  await page.locator('.answer').waitFor({ timeout: LONG });
}

/** Waits until the answer has ended with `status` and returns its text. */
async function ended(page, status) {
  await waitFor(async () => (await answerStatus(page)) === status, {
    what: `the answer to end (${status})`,
    describe: async () => `status ${await answerStatus(page)}, ${(await answerText(page)).length} characters`,
  });
  return answerText(page);
}

describe('Next.js chat on Sluice', () => {
  let sluice;
  let sluiceOrigin;
  let next;
  let appOrigin;
  let browser;

  before(async () => {
    const build = start(process.execPath, [NEXT, 'build'], { cwd: APP, env: env() });
    const built = await build.exited;
    assert.equal(built.code, 0, `next build failed:\n${build.log()}`);

    const sluicePort = await freePort();
    sluiceOrigin = `http://127.0.0.1:${sluicePort}`;
    sluice = start(
      SLUICE_BIN,
      ['serve', '--provider', 'scripted', '--store', 'memory', '--listen', `127.0.0.1:${sluicePort}`],
      {
        env: env({
          SLUICE_SCRIPTED_TEXT: TEXT,
          SLUICE_SCRIPTED_TOKENS_PER_SECOND: String(TOKENS_PER_SECOND),
        }),
      },
    );
    await untilServing(sluice, `${sluiceOrigin}/healthz`, 'sluice serve');

    const appPort = await freePort();
    appOrigin = `http://127.0.0.1:${appPort}`;
    next = start(process.execPath, [NEXT, 'start', '--port', String(appPort), '--hostname', '127.0.0.1'], {
      cwd: APP,
      env: env({ SLUICE_URL: sluiceOrigin }),
    });
    await untilServing(next, `${appOrigin}/`, 'next start');

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    });
  });

  after(async () => {
    await browser?.close();
    await next?.stop();
    await sluice?.stop();
  });

  /** A fresh context (its own localStorage and sessionStorage) with the app open. */
  async function openApp() {
    const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
    const page = await context.newPage();
    await page.goto(appOrigin);
    return { context, page };
  }

  test('the answer grows token by token, the same in a second tab', async () => {
    const { context, page } = await openApp();
    await ask(page, 'Tell me about the river');

    // At least three samples, each longer than the one before, while it streams.
    const lengths = [];
    await waitFor(
      async () => {
        const length = (await answerText(page)).length;
        if (length > (lengths.at(-1) ?? 0)) lengths.push(length);
        return lengths.length >= 3;
      },
      { interval: 200, what: 'the text to grow three times', describe: () => JSON.stringify(lengths) },
    );
    assert.equal(await answerStatus(page), 'streaming');
    assert.ok(lengths.at(-1) < TEXT.length, `still streaming after ${JSON.stringify(lengths)}`);
    await waitFor(async () => (await answerText(page)).length > TEXT.length / 4, { what: 'a quarter of the text' });
    assert.equal(await answerStatus(page), 'streaming');
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'nextjs-chat.png') });

    // A second tab (same browser profile) finds the running answer and follows it too.
    const second = await context.newPage();
    await second.goto(appOrigin);
    await second.locator('.answer').waitFor({ timeout: LONG });
    assert.equal(await second.locator('.answer .question').textContent(), 'Tell me about the river');

    assert.equal(await ended(page, 'stop'), TEXT);
    assert.equal(await ended(second, 'stop'), TEXT);
    await context.close();
  });

  test('a reload mid-answer continues where it was: nothing lost, nothing doubled', async () => {
    const { context, page } = await openApp();
    await ask(page, 'Reload me');
    await waitFor(async () => (await answerText(page)).length > TEXT.length / 5, { what: 'a fifth of the text' });
    const before = await answerText(page);
    assert.ok(TEXT.startsWith(before));

    const streams = [];
    page.on('request', (request) => {
      if (request.url().includes('/events')) streams.push(request.url());
    });
    await page.reload();

    // Straight after the reload the page shows what it had, and asks only for the rest.
    await page.locator('.answer').waitFor({ timeout: LONG });
    const restored = await answerText(page);
    assert.ok(restored.length >= before.length, `${restored.length} characters after the reload, ${before.length} before`);
    assert.ok(TEXT.startsWith(restored), 'the text after the reload is a prefix of the answer');
    await waitFor(() => streams.length > 0, { what: 'the page to reopen the stream' });
    assert.match(streams[0], /[?&]lastEventID=(%23)?[0-9a-f]+\.\d+/, 'the stream is reopened after the last event');

    assert.equal(await ended(page, 'stop'), TEXT);
    await context.close();
  });

  test('Stop cancels the upstream', async () => {
    const { context, page } = await openApp();
    const cancelledBefore = await metric(sluiceOrigin, 'sluice_upstream_cancelled_total');
    await ask(page, 'Go on for a while');
    await waitFor(async () => (await answerText(page)).length > 40, { what: 'some text' });

    await page.getByRole('button', { name: 'Stop' }).click();
    const stopped = await ended(page, 'cancelled');
    assert.ok(stopped.length < TEXT.length, 'stopped before the end');
    assert.ok(TEXT.startsWith(stopped));
    assert.match(await page.locator('.answer .status').textContent(), /^Stopped/);

    // Sluice stopped the scripted model's stream, and nothing more arrives.
    await waitFor(async () => (await metric(sluiceOrigin, 'sluice_upstream_cancelled_total')) >= cancelledBefore + 1, {
      what: 'sluice_upstream_cancelled_total to count the stop',
    });
    await waitFor(async () => (await metric(sluiceOrigin, 'sluice_generations_active')) === 0, {
      what: 'no answer running in sluice',
    });
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(await answerText(page), stopped, 'no text after the stop');
    await context.close();
  });
});
