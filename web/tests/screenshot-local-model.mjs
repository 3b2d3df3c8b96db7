// The chat page on the server `make run` starts (the built-in model, no key), answering one
// question, with its time to first token and tokens/s: `make screenshot-local-model` (not a
// test; `node --test` does not pick this file). The picture goes to
// docs/chat-local-model.png, and the figures are printed.
//
//   SLUICE_URL=http://127.0.0.1:8080 node tests/screenshot-local-model.mjs

import path from 'node:path';

import { launchBrowser, lastAnswerStatus, waitFor } from './harness.mjs';

const origin = process.env.SLUICE_URL ?? 'http://127.0.0.1:8080';
const out = path.resolve(import.meta.dirname, '../../docs/chat-local-model.png');
const question = process.env.QUESTION ?? 'Explain in a few sentences how a bicycle works, for a child.';

const browser = await launchBrowser();
try {
  const page = await browser.context.newPage();
  await page.goto(`${origin}/`);
  await page.waitForSelector('[data-testid=model] option', { state: 'attached' });
  const box = page.locator('[data-testid=prompt]');
  await box.fill(question);
  await box.press('Enter');
  await waitFor(async () => (await lastAnswerStatus(page)) === 'done', { timeout: 120_000, what: 'the answer to end' });
  const metrics = await page.locator('[data-testid=metrics]').last().innerText();
  await page.screenshot({ path: out });
  console.log(`${metrics}\nwrote ${out}`);
} finally {
  await browser.close();
}
