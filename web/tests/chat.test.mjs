// The chat page in a real browser against a real server: the typing effect, stop, resume
// after a reload, a second tab, sanitizing, and the failure states.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  ask,
  lastAnswerStatus,
  lastAnswerText,
  launchBrowser,
  metric,
  openChat,
  screenshot,
  startServer,
  waitFor,
  words,
} from './harness.mjs';

const MARKDOWN = [
  'Here is **Sluice** streaming a *markdown* answer, token by token:',
  '',
  '1. an ordered list item',
  '2. another one, with `inline code`',
  '',
  '```rust',
  'fn main() {',
  '    let answer = 42; // a comment',
  '    println!("the answer is {answer}");',
  '}',
  '```',
  '',
  '> A quote to finish, and a [link](https://example.com).',
].join('\n');

let browser;
const servers = [];

async function server(options) {
  const s = await startServer(options);
  servers.push(s);
  return s;
}

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await Promise.all(servers.map((s) => s.stop()));
});

describe('chat page', () => {
  test('an answer appears token by token, as markdown, highlighted', async () => {
    const { origin } = await server({ text: MARKDOWN, tokensPerSecond: 20, ttftMs: 150 });
    const { page, errors } = await openChat(browser.context, origin);
    await ask(page, 'Show me some markdown');

    // Sample the visible answer while it streams: it must grow in many steps.
    const seen = [];
    let midStream = false;
    await waitFor(
      async () => {
        const text = await lastAnswerText(page);
        if (text && text !== seen[seen.length - 1]) seen.push(text);
        if (!midStream && text.includes('let answer')) {
          midStream = true; // an open code fence, mid-stream
          await screenshot(page, 'chat-desktop-streaming.png');
        }
        return (await lastAnswerStatus(page)) === 'done';
      },
      { interval: 20, what: 'the answer to end' },
    );
    const lengths = seen.map((t) => t.length);
    assert.ok(seen.length >= 5, `the answer grew in ${seen.length} steps: ${lengths.join(', ')}`);
    for (let i = 1; i < seen.length; i += 1) {
      assert.ok(lengths[i] >= lengths[i - 1] - 2, `the visible text shrank: ${lengths.join(', ')}`);
    }

    const answer = page.locator('[data-testid=assistant] [data-testid=answer]').last();
    assert.equal(await answer.locator('strong').first().innerText(), 'Sluice');
    assert.equal(await answer.locator('ol > li').count(), 2);
    assert.ok((await answer.locator('pre code.hljs.language-rust .hljs-keyword').count()) >= 2, 'rust is highlighted');
    assert.match(await answer.locator('pre code').innerText(), /println!\("the answer is \{answer\}"\);/);
    assert.equal(await answer.locator('button[data-copy-code]').count(), 1, 'a copy button on the code block');
    assert.equal(await answer.locator('a[href="https://example.com"][rel~=noopener]').count(), 1);
    const metrics = await page.locator('[data-testid=metrics]').last().innerText();
    assert.match(metrics, /TTFT \d+ ms · [\d.]+ tokens\/s · \d+ tokens/);

    // The conversation is kept across a reload.
    await page.reload();
    await page.waitForSelector('[data-testid=assistant][data-status=done]');
    assert.equal(await page.locator('.conversation').count(), 1);
    assert.match(await page.locator('.conversation-title').first().innerText(), /Show me some markdown/);

    // Screenshots: desktop and phone, light and dark.
    await page.emulateMedia({ colorScheme: 'light' });
    await screenshot(page, 'chat-desktop-light.png');
    await page.emulateMedia({ colorScheme: 'dark' });
    await screenshot(page, 'chat-desktop-dark.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await screenshot(page, 'chat-phone-dark.png');
    await page.emulateMedia({ colorScheme: 'light' });
    await screenshot(page, 'chat-phone-light.png');
    await page.setViewportSize({ width: 1280, height: 800 });
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('regenerate, edit the last prompt, and the settings sent with it', async () => {
    const { origin } = await server({ text: 'You said: {prompt}', tokensPerSecond: 100 });
    const { page } = await openChat(browser.context, origin);
    const bodies = [];
    page.on('request', (r) => {
      if (r.method() === 'POST' && r.url().endsWith('/api/generations')) bodies.push(JSON.parse(r.postData()));
    });
    await page.getByRole('button', { name: 'Settings' }).click();
    await page.getByLabel('System prompt').fill('Be brief.');
    const temperature = page.getByRole('slider', { name: 'Temperature' });
    await temperature.focus();
    for (let i = 0; i < 6; i += 1) await temperature.press('ArrowRight'); // 0.7 -> 1.3
    await ask(page, 'first try');
    await waitFor(async () => (await lastAnswerText(page)).trim() === 'You said: first try', { what: 'the answer' });
    await page.waitForSelector('[data-testid=assistant][data-status=done]');

    await page.locator('[data-testid=regenerate]').click();
    await waitFor(async () => bodies.length === 2 && (await lastAnswerStatus(page)) === 'done', { what: 'the regenerated answer' });
    assert.equal(await page.locator('[data-testid=assistant]').count(), 1, 'regenerate replaces the answer');
    assert.deepEqual(bodies[1].messages, bodies[0].messages);

    await page.locator('[data-testid=edit]').click();
    const editor = page.getByLabel('Edit your message');
    await editor.fill('second try');
    await editor.press('Enter');
    await waitFor(async () => (await lastAnswerText(page)).trim() === 'You said: second try', { what: 'the edited answer' });
    assert.equal(await page.locator('.message.user .bubble').count(), 1);
    assert.equal(await page.locator('.message.user .bubble').innerText(), 'second try');
    assert.deepEqual(bodies[2].messages, [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'second try' },
    ]);
    assert.equal(bodies[2].temperature, 1.3);
    assert.equal(bodies[2].model, 'scripted');

    // New chat, then delete it.
    await page.locator('[data-testid=new-chat]').click();
    assert.equal(await page.locator('.conversation').count(), 2);
    page.once('dialog', (d) => d.accept());
    await page.getByRole('button', { name: 'Delete second try' }).click();
    assert.equal(await page.locator('.conversation').count(), 1);
    await page.close();
  });

  test('stop cancels the upstream; Escape does too', async () => {
    const { origin } = await server({ text: words(400), tokensPerSecond: 15 });
    const { page } = await openChat(browser.context, origin);
    const before = await metric(origin, 'sluice_upstream_cancelled_total');

    await ask(page, 'Count for a long time');
    await waitFor(async () => (await lastAnswerText(page)).split(' ').length >= 5, { what: 'five words' });
    await page.locator('[data-testid=stop]').click();
    await page.waitForSelector('[data-testid=assistant][data-status=done]');
    const stopped = await lastAnswerText(page);
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(await lastAnswerText(page), stopped, 'no text after the stop');
    assert.ok(stopped.split(' ').length < 400);
    assert.equal(await page.locator('.answer-foot .note', { hasText: 'Stopped' }).count(), 1);
    await waitFor(async () => (await metric(origin, 'sluice_upstream_cancelled_total')) >= before + 1, {
      what: 'sluice_upstream_cancelled_total to count the stop',
    });

    // Again with the keyboard alone: Enter sends, Escape stops.
    await page.keyboard.type('And again');
    await page.keyboard.press('Enter');
    await waitFor(async () => (await page.locator('[data-testid=assistant]').count()) === 2 && (await lastAnswerText(page)).length > 0, {
      what: 'the second answer',
    });
    await page.keyboard.press('Escape');
    await waitFor(async () => (await lastAnswerStatus(page)) === 'done', { what: 'the second answer to stop' });
    await waitFor(async () => (await metric(origin, 'sluice_upstream_cancelled_total')) >= before + 2, {
      what: 'the second cancel',
    });
    await page.close();
  });

  test('auto-scroll follows the answer until the reader scrolls up', async () => {
    const text = Array.from({ length: 400 }, (_, i) => `line ${i + 1}`).join('\n\n');
    const { origin } = await server({ text, tokensPerSecond: 80 });
    const { page } = await openChat(browser.context, origin);
    const scroll = () =>
      page.locator('[data-testid=messages]').evaluate((el) => ({
        top: el.scrollTop,
        fromBottom: el.scrollHeight - el.scrollTop - el.clientHeight,
        overflow: el.scrollHeight - el.clientHeight,
      }));
    await ask(page, 'Many lines');
    await waitFor(async () => (await scroll()).overflow > 400, { what: 'the answer to overflow the view' });
    assert.ok((await scroll()).fromBottom < 48, 'the view follows the newest text');

    await page.mouse.move(640, 400);
    await page.mouse.wheel(0, -300);
    await waitFor(async () => (await scroll()).fromBottom > 150, { what: 'the wheel to scroll up' });
    const held = (await scroll()).top;
    const length = (await lastAnswerText(page)).length;
    await waitFor(async () => (await lastAnswerText(page)).length > length + 100, { what: 'more text' });
    assert.ok(Math.abs((await scroll()).top - held) <= 2, 'the view stays where the reader put it');
    const jump = page.getByRole('button', { name: '↓ Latest' });
    await jump.click();
    await waitFor(async () => (await scroll()).fromBottom < 48, { what: 'the jump to the latest text' });
    const again = (await lastAnswerText(page)).length;
    await waitFor(async () => (await lastAnswerText(page)).length > again + 100, { what: 'more text' });
    assert.ok((await scroll()).fromBottom < 48, 'the view follows again');
    await page.keyboard.press('Escape');
    await page.waitForSelector('[data-testid=assistant][data-status=done]');
    await page.close();
  });

  test('a reload mid-answer ends with the exact full text, once', async () => {
    const text = words(120);
    const { origin } = await server({ text, tokensPerSecond: 25 });
    const { page } = await openChat(browser.context, origin);
    await ask(page, 'Count');
    await waitFor(async () => (await lastAnswerText(page)).split(' ').length >= 15, { what: 'fifteen words' });
    const beforeReload = await lastAnswerText(page);
    await page.reload();

    let firstAfter = null;
    await waitFor(
      async () => {
        const now = await lastAnswerText(page);
        if (firstAfter === null && now) firstAfter = now;
        return (await lastAnswerStatus(page)) === 'done';
      },
      { interval: 20, what: 'the resumed answer to end' },
    );
    assert.ok(firstAfter.startsWith(beforeReload.slice(0, -5)), 'the text kept across the reload');
    assert.ok(firstAfter.split(' ').length < 120, 'the reload happened mid-answer');
    assert.equal((await lastAnswerText(page)).trim(), text);
    assert.equal(await page.locator('[data-testid=assistant]').count(), 1);
    const stored = await page.evaluate(() => {
      const list = JSON.parse(localStorage.getItem('sluice.chat.conversations.v1'));
      return list[0].messages[1].content;
    });
    assert.equal(stored, text);
    await page.close();
  });

  test('a second tab follows the running answer without a connection of its own', async () => {
    const text = words(160);
    const { origin } = await server({ text, tokensPerSecond: 20 });
    const first = await openChat(browser.context, origin);
    await ask(first.page, 'Count');
    await waitFor(async () => (await lastAnswerText(first.page)).split(' ').length >= 5, { what: 'five words' });

    const second = await browser.context.newPage();
    await second.addInitScript(() => {
      const Original = window.EventSource;
      window.__eventSources = 0;
      window.EventSource = class extends Original {
        constructor(...args) {
          super(...args);
          window.__eventSources += 1;
        }
      };
    });
    await second.goto(`${origin}/`);
    const seenBySecond = (await lastAnswerText(second)).split(' ').length;
    await waitFor(async () => (await lastAnswerText(second)).split(' ').length >= seenBySecond + 10, {
      what: 'the second tab to follow the answer as it grows',
    });
    assert.equal(await second.evaluate(() => window.__eventSources), 0, 'the second tab opened no EventSource');

    // The first tab goes away mid-answer: the second one takes over and finishes it.
    await first.page.close();
    await waitFor(async () => (await lastAnswerStatus(second)) === 'done', { what: 'the answer to end in the second tab' });
    assert.equal((await lastAnswerText(second)).trim(), text);
    assert.equal(await second.evaluate(() => window.__eventSources), 1);
    await second.close();
  });

  test('HTML and script in an answer are shown, never run', async () => {
    const text =
      'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> ' +
      '[click](javascript:window.__pwned=3) <b onmouseover="window.__pwned=4">bold</b> done.';
    const { origin } = await server({ text, tokensPerSecond: 60 });
    const { page } = await openChat(browser.context, origin);
    await ask(page, 'Try to run script');
    await page.waitForSelector('[data-testid=assistant][data-status=done]');
    await page.locator('[data-testid=answer] >> text=bold').hover().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));

    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    const answer = page.locator('[data-testid=answer]').last();
    const shown = await answer.innerText();
    assert.ok(shown.includes('<script>window.__pwned=2</script>'), `the script shows as text: ${shown}`);
    assert.ok(shown.includes('onerror="window.__pwned=1"'), 'the img shows as text');
    assert.equal(await answer.locator('script, img, iframe, [onerror], [onmouseover]').count(), 0);
    assert.equal(await answer.locator('a[href^="javascript:" i]').count(), 0);
    await page.close();
  });

  test('an upstream failure, a rate limit and a lost connection are shown', async () => {
    // The upstream fails mid-answer.
    const failing = await server({ text: words(30), tokensPerSecond: 50, failAfter: 5 });
    let { page } = await openChat(browser.context, failing.origin);
    await ask(page, 'Fail');
    await page.waitForSelector('[data-testid=upstream-error]');
    assert.match(await page.locator('[data-testid=upstream-error]').innerText(), /The model failed mid-answer/);
    assert.equal((await lastAnswerText(page)).trim(), words(5));
    await page.close();

    // Past two requests a minute (the model list, the first answer), 429.
    const limited = await server({ text: 'ok', tokensPerSecond: 0, args: ['--requests-per-minute', '2'] });
    ({ page } = await openChat(browser.context, limited.origin));
    await ask(page, 'One');
    await page.waitForSelector('[data-testid=assistant][data-status=done]');
    await ask(page, 'Two');
    await page.waitForSelector('[data-testid=start-failure]');
    assert.match(await page.locator('[data-testid=start-failure]').innerText(), /Rate limited\..*retry in \d+ s/s);
    await screenshot(page, 'chat-rate-limited.png');
    await page.close();

    // The server goes away mid-answer: the page says it is reconnecting; the server comes
    // back without the answer (a memory store): the page says the answer is gone.
    const dying = await server({ text: words(300), tokensPerSecond: 10 });
    ({ page } = await openChat(browser.context, dying.origin));
    await ask(page, 'Count');
    await waitFor(async () => (await lastAnswerText(page)).split(' ').length >= 3, { what: 'three words' });
    await dying.stop();
    await page.waitForSelector('[data-testid=reconnecting]');
    await screenshot(page, 'chat-reconnecting.png');
    await server({ text: 'x', port: dying.port });
    await page.waitForSelector('[data-testid=assistant][data-status=done]', { timeout: 20_000 });
    assert.match(await page.locator('[data-testid=upstream-error]').innerText(), /no longer available/);
    await page.close();
  });
});
