// Browser tests of the chat page and the hub console: a real `sluice serve` (memory store,
// scripted model) on a port the kernel picks, and Debian's chromium driven by playwright-core.

import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS } from '../../tests/js/chromium.mjs';
import { listenArgs } from '../../tests/js/hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const run = promisify(execFile);

/** The binary under test: $SLUICE_BIN, else the workspace's debug build. */
export const SLUICE_BIN = path.resolve(here, process.env.SLUICE_BIN ?? '../../target/debug/sluice');
/** Where screenshots go (git-ignored). */
export const ARTIFACTS = path.resolve(here, '../../artifacts');
export const SECRET = 'web-tests-secret';

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Polls `check` until it returns something truthy, which is returned. */
export async function waitFor(check, { timeout = 20_000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Starts `sluice serve --store memory --provider scripted` with the scripted model's knobs
 * (`text`, `tokensPerSecond`, `ttftMs`, `failAfter`) and extra flags; resolves when it answers.
 */
export async function startServer({ text, tokensPerSecond = 20, ttftMs = 100, failAfter, args = [], port, tls = false, dev = false } = {}) {
  const listen = await listenArgs(port);
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('SLUICE_')) delete env[key];
  if (text !== undefined) env.SLUICE_SCRIPTED_TEXT = text;
  env.SLUICE_SCRIPTED_TOKENS_PER_SECOND = String(tokensPerSecond);
  env.SLUICE_SCRIPTED_TTFT_MS = String(ttftMs);
  if (failAfter !== undefined) env.SLUICE_SCRIPTED_FAIL_AFTER = String(failAfter);
  env.RUST_LOG = 'warn';
  const child = spawn(
    SLUICE_BIN,
    // Development mode (`--dev`) makes its own secret, in a data folder of a fresh directory.
    ['serve', ...listen.args, '--store', 'memory', '--provider', 'scripted', ...(dev ? ['--dev'] : ['--jwt-secret', SECRET, '--anonymous']), ...(tls ? ['--tls-self-signed'] : []), ...args],
    { env, stdio: ['ignore', 'ignore', 'pipe'], cwd: tls || dev ? await mkdtemp(path.join(os.tmpdir(), 'sluice-work-')) : undefined },
  );
  children.add(child);
  let log = '';
  child.stderr.on('data', (d) => {
    log += d;
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`sluice serve exited: ${log}`);
      port = await listen.boundPort();
      return port !== null;
    },
    { what: 'sluice serve to listen' },
  );
  const origin = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  // Over TLS the ready file is enough (fetch would refuse the self-signed certificate).
  if (!tls) {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`sluice serve exited: ${log}`);
        try {
          return (await fetch(`${origin}/healthz`)).ok;
        } catch {
          return false;
        }
      },
      { what: 'sluice serve to answer' },
    );
  }
  return {
    port,
    origin,
    log: () => log,
    async stop() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
      children.delete(child);
    },
  };
}

/** A counter from the server's Prometheus metrics (summed over labels), 0 when absent. */
export async function metric(origin, name) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) total += Number(line.split(' ').pop());
  }
  return total;
}

/** Runs the sluice binary; resolves with its stdout. */
export async function sluice(...args) {
  const { stdout } = await run(SLUICE_BIN, args);
  return stdout.trim();
}

/** Headless Debian chromium with a fresh profile; `close()` removes the profile. */
export async function launchBrowser({ ignoreHTTPSErrors = false } = {}) {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'sluice-web-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors,
    viewport: { width: 1280, height: 800 },
    args: CHROMIUM_ARGS,
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/** Saves a screenshot under artifacts/. */
export async function screenshot(page, name) {
  await mkdir(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file });
  return file;
}

/** Opens the chat page and waits until the model list is in. */
export async function openChat(context, origin) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${origin}/`);
  await page.waitForSelector('[data-testid=model] option[value=scripted]', { state: 'attached' });
  return { page, errors };
}

/** Types a prompt and sends it with Enter. */
export async function ask(page, prompt) {
  const box = page.locator('[data-testid=prompt]');
  await box.click();
  await box.fill(prompt);
  await box.press('Enter');
}

/** The visible text of the last answer ('' before it has any). */
export function lastAnswerText(page) {
  return page.evaluate(() => {
    const answers = document.querySelectorAll('[data-testid=assistant]');
    const last = answers[answers.length - 1];
    return last?.querySelector('[data-testid=answer]')?.innerText ?? '';
  });
}

/** The status of the last answer (`pending`, `streaming`, `done`, `failed`), or null. */
export function lastAnswerStatus(page) {
  return page.evaluate(() => {
    const answers = document.querySelectorAll('[data-testid=assistant]');
    return answers[answers.length - 1]?.getAttribute('data-status') ?? null;
  });
}

/** Words `w1 … wN`: a text whose every token is distinct, so a loss or a doubling shows. */
export function words(n, prefix = 'w') {
  return Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`).join(' ');
}
