// The hub console in a real browser: it subscribes (in either protocol version), shows an
// update published with `sluice publish`, publishes one itself, and shows its connection
// state.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { SECRET, launchBrowser, screenshot, sluice, startServer } from './harness.mjs';

let browser;
let hub;

before(async () => {
  browser = await launchBrowser();
  hub = await startServer();
});

after(async () => {
  await browser?.close();
  await hub?.stop();
});

test('the console shows updates published with sluice publish, and publishes its own', async () => {
  const topic = 'urn:sluice:console:test';
  const subscriber = await sluice('token', '--secret', SECRET, '--subscribe', '*');
  const publisher = await sluice('token', '--secret', SECRET, '--publish', '*');

  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${hub.origin}/console`);
  await page.locator('[data-testid=sub-topics]').fill(topic);
  await page.locator('[data-testid=sub-token]').fill(subscriber);
  await page.locator('[data-testid=subscribe]').click();
  await page.waitForSelector('[data-testid=connection-state][data-state=open]');

  // A public update from the command line.
  const id = await sluice(
    'publish', '--hub', `${hub.origin}/.well-known/mercure`, '--topic', topic,
    '--type', 'greeting', '--data', 'hello from sluice publish', '--token', publisher,
  );
  assert.ok(id.length > 0);
  const row = page.locator('[data-testid=event]', { has: page.locator(`[data-testid=event-id]:text-is("${id}")`) });
  await row.waitFor();
  assert.equal(await row.locator('[data-testid=event-type]').innerText(), 'greeting');
  assert.equal(await row.locator('[data-testid=event-data]').innerText(), 'hello from sluice publish');

  // A private update from the console's own form: the subscriber's token lets it through.
  await page.locator('[data-testid=pub-topics]').fill(topic);
  await page.locator('[data-testid=pub-data]').fill('{"from": "the console"}');
  await page.locator('[data-testid=pub-type]').fill('note');
  await page.locator('[data-testid=pub-id]').fill('console-1');
  await page.getByRole('checkbox', { name: 'Private' }).check();
  await page.locator('[data-testid=pub-token]').fill(publisher);
  await page.locator('[data-testid=publish]').click();
  await page.locator('[data-testid=pub-result]', { hasText: 'Published with id console-1' }).waitFor();
  const own = page.locator('[data-testid=event]', { has: page.locator('[data-testid=event-id]:text-is("console-1")') });
  await own.waitFor();
  assert.equal(await own.locator('[data-testid=event-type]').innerText(), 'note');

  // Publishing without a token is refused, and the console says so.
  await page.locator('[data-testid=pub-token]').fill('');
  await page.locator('[data-testid=pub-id]').fill('');
  await page.locator('[data-testid=publish]').click();
  await page.locator('[data-testid=pub-result]', { hasText: '401' }).waitFor();

  await page.emulateMedia({ colorScheme: 'light' });
  await screenshot(page, 'console-desktop-light.png');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'console-desktop-dark.png');
  await page.setViewportSize({ width: 390, height: 844 });
  await screenshot(page, 'console-phone-dark.png');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the console speaks draft-08: a URL pattern and an access token receive a private update', async () => {
  const hubUrl = `${hub.origin}/.well-known/mercure`;
  const access = (...grants) => sluice('token', '--access', '--secret', SECRET, '--audience', hubUrl, ...grants);
  const subscriber = await access('--subscribe-pattern', 'https://example.com/console/:id');
  const publisher = await access('--publish', '*');

  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${hub.origin}/console`);
  await page.locator('[data-testid=sub-matching]').selectOption('draft-08-urlpattern');
  await page.locator('[data-testid=sub-topics]').fill('https://example.com/console/:id');
  await page.locator('[data-testid=sub-token]').fill(subscriber);
  await page.locator('[data-testid=subscribe]').click();
  await page.waitForSelector('[data-testid=connection-state][data-state=open]');

  const publish = (topic, data) =>
    sluice('publish', '--hub', hubUrl, '--topic', topic, '--data', data, '--private', '--token', publisher);
  await publish('https://example.com/console/1/comments', 'not matched: :id does not cross a slash');
  const id = await publish('https://example.com/console/1', 'private, for the pattern');
  const row = page.locator('[data-testid=event]', { has: page.locator(`[data-testid=event-id]:text-is("${id}")`) });
  await row.waitFor();
  assert.equal(await row.locator('[data-testid=event-data]').innerText(), 'private, for the pattern');
  assert.equal(await page.locator('[data-testid=event]').count(), 1, 'only the matching update');
  await screenshot(page, 'console-draft08.png');
  assert.deepEqual(errors, []);
  await page.close();
});

test('with sluice serve --dev the console publishes out of the box: no token to find or type', async () => {
  const dev = await startServer({ dev: true });
  try {
    const topic = 'https://example.com/first-five-minutes';
    const page = await browser.context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${dev.origin}/console`);
    await page.locator('[data-testid=dev-token]').waitFor();
    assert.notEqual(await page.locator('[data-testid=pub-token]').inputValue(), '');
    await page.locator('[data-testid=sub-topics]').fill(topic);
    await page.locator('[data-testid=subscribe]').click();
    await page.waitForSelector('[data-testid=connection-state][data-state=open]');
    await page.locator('[data-testid=pub-topics]').fill(topic);
    await page.locator('[data-testid=pub-data]').fill('published from the console, no reading');
    await page.locator('[data-testid=publish]').click();
    await page.locator('[data-testid=pub-result]', { hasText: 'Published with id' }).waitFor();
    const row = page.locator('[data-testid=event]', { has: page.locator('[data-testid=event-data]:text-is("published from the console, no reading")') });
    await row.waitFor();
    await screenshot(page, 'console-dev-mode.png');
    assert.deepEqual(errors, []);
    await page.close();
    // Outside development mode nobody is offered a token.
    assert.equal((await fetch(`${hub.origin}/api/dev/token`)).status, 404);
  } finally {
    await dev.stop();
  }
});
