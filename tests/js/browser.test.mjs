// The hub seen by a real browser: Debian's Chromium, driven by playwright-core, runs pages
// from another origin (CORS) whose `EventSource` subscribes to the hub, one page per protocol
// version (draft-07 `topic=`, draft-08 `match=`). The hub is restarted under them on the same
// port and durable store; each browser page reconnects on its own with Last-Event-ID and must
// end with every update exactly once, in order.

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS } from './chromium.mjs';

import {
  HUB_PATH,
  mintToken,
  publishWithCli,
  publishWithCurl,
  publishWithFetch,
  startHub,
  tempDir,
  waitFor,
} from './hub.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(here, process.env.ARTIFACTS_DIR ?? '../../artifacts');
const SECRET = 'browser-test-secret';
const WAIT = { timeout: 30_000, polling: 50 };

// The test page: opens one EventSource on the hub given in its query string (subscribing with
// the parameter `param`: topic, match or match_urlpattern) and records
// every message (data and lastEventId), every open and every error in `window`, and shows
// them in a table.
const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sluice hub: browser EventSource</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1b1f24; }
  h1 { font-size: 18px; margin: 0 0 4px; }
  #status { margin: 4px 0 12px; color: #444; }
  #status b { color: #0a7a32; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border: 1px solid #c9ced6; padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: #eef1f5; }
  td.id { font-family: ui-monospace, monospace; font-size: 12px; white-space: nowrap; }
  pre { margin: 0; font: inherit; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Sluice hub &mdash; messages received by this page's EventSource</h1>
<div id="subscription"></div>
<div id="status"></div>
<table>
  <thead><tr><th>#</th><th>lastEventId</th><th>data</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<script>
  const params = new URLSearchParams(location.search);
  const url = new URL(params.get('hub'));
  url.searchParams.append(params.get('param') ?? 'topic', params.get('topic'));
  const withCredentials = params.get('credentials') === '1';
  window.received = [];
  window.opens = 0;
  window.errors = 0;
  const names = ['CONNECTING', 'OPEN', 'CLOSED'];
  const es = new EventSource(url, { withCredentials });
  window.source = es;
  document.getElementById('subscription').textContent =
    'GET ' + url + (withCredentials ? ' (withCredentials)' : '') + ' from ' + location.origin;
  function status() {
    document.getElementById('status').innerHTML =
      'readyState <b>' + names[es.readyState] + '</b> &middot; opened ' + window.opens +
      ' time(s) &middot; errors ' + window.errors + ' &middot; messages ' + window.received.length;
  }
  es.onopen = () => { window.opens++; status(); };
  es.onerror = () => { window.errors++; status(); };
  es.onmessage = (event) => {
    window.received.push({ data: event.data, lastEventId: event.lastEventId });
    const row = document.createElement('tr');
    for (const text of [String(window.received.length), event.lastEventId, event.data]) {
      const cell = document.createElement('td');
      if (text === event.lastEventId) cell.className = 'id';
      const pre = document.createElement('pre');
      pre.textContent = text;
      cell.append(pre);
      row.append(cell);
    }
    document.getElementById('rows').append(row);
    status();
  };
  status();
</script>
</body>
</html>
`;

/** The page's origin: a plain HTTP server on another port than the hub's. */
async function startPageServer() {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && new URL(req.url, 'http://x').pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

describe('a real browser (Chromium) subscribed across origins', () => {
  let profile;
  let store;
  let pages;
  let hub;
  let context;
  let publisher;
  const pageLog = [];

  before(async () => {
    profile = await tempDir('chromium-profile');
    store = await tempDir('browser-store');
    pages = await startPageServer();
    hub = await startHub({
      secret: SECRET,
      store: `sqlite:${store.dir}/hub.db`,
      anonymous: true,
      corsOrigins: [pages.origin],
      retry: 500,
    });
    publisher = await mintToken({ secret: SECRET, publish: ['*'] });
    context = await chromium.launchPersistentContext(profile.dir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1100, height: 620 },
    });
    context.on('console', (msg) => pageLog.push(`console.${msg.type()}: ${msg.text()}`));
    context.on('weberror', (err) => pageLog.push(`page error: ${err.error().message}`));
  });

  after(async () => {
    await context?.close();
    if (hub) await hub.stop();
    await pages?.close();
    await profile?.remove();
    await store?.remove();
  });

  const pageUrl = (topic, { credentials = false, param = 'topic' } = {}) => {
    const query = new URLSearchParams({ hub: hub.hubUrl, topic, param });
    if (credentials) query.set('credentials', '1');
    return `${pages.origin}/?${query}`;
  };
  const pageState = (page) =>
    page.evaluate(() => ({
      readyState: window.source.readyState,
      opens: window.opens,
      errors: window.errors,
      received: window.received,
    }));
  const explain = async (page) =>
    `page state: ${JSON.stringify(await pageState(page), null, 1)}\n${pageLog.slice(-30).join('\n')}\nhub log:\n${hub.log()}`;

  test('withCredentials sends the mercureAuthorization cookie cross-origin: private updates arrive', async () => {
    const topic = 'https://example.com/browser/private/{id}';
    const token = await mintToken({ secret: SECRET, subscribe: [topic] });
    await context.addCookies([
      { name: 'mercureAuthorization', value: token, domain: '127.0.0.1', path: HUB_PATH },
    ]);
    const withCookie = await context.newPage();
    const without = await context.newPage();
    await withCookie.goto(pageUrl(topic, { credentials: true }));
    await without.goto(pageUrl(topic));
    for (const page of [withCookie, without]) {
      await page.waitForFunction(() => window.opens === 1, null, WAIT).catch(async (err) => {
        throw new Error(`${err.message}\n${await explain(page)}`);
      });
    }

    const privateId = await publishWithCurl(hub.hubUrl, publisher, {
      topic: 'https://example.com/browser/private/1',
      data: 'for token holders',
      isPrivate: true,
    });
    const publicId = await publishWithCli(hub.hubUrl, publisher, {
      topic: 'https://example.com/browser/private/2',
      data: 'for everyone',
    });
    await withCookie.waitForFunction(() => window.received.length >= 2, null, WAIT);
    await without.waitForFunction(() => window.received.length >= 1, null, WAIT);
    assert.deepEqual((await pageState(withCookie)).received, [
      { data: 'for token holders', lastEventId: privateId },
      { data: 'for everyone', lastEventId: publicId },
    ]);
    assert.deepEqual((await pageState(without)).received, [{ data: 'for everyone', lastEventId: publicId }]);
    await context.clearCookies();
    await withCookie.close();
    await without.close();
  });

  test('one page per protocol version: both receive, survive a hub restart via Last-Event-ID, end with each update once in order', async () => {
    const topic = 'https://example.com/browser/room';
    // The draft-07 page subscribes with topic=, the draft-08 one with match=; each version's
    // response names the resumed cursor in its own header.
    const versions = [
      { name: 'draft-07', param: 'topic', cursorHeader: 'last-event-id' },
      { name: 'draft-08', param: 'match', cursorHeader: 'mercure-last-event-id' },
    ];
    for (const version of versions) {
      version.page = await context.newPage();
      await version.page.goto(pageUrl(topic, { param: version.param }));
      await version.page.waitForFunction(() => window.opens === 1, null, WAIT);
    }
    const forEachPage = (what, n) =>
      Promise.all(
        versions.map(({ name, page }) =>
          page.waitForFunction((count) => window.received.length >= count, n, WAIT).catch(async (err) => {
            throw new Error(`${name} page, ${what}: ${err.message}\n${await explain(page)}`);
          }),
        ),
      );

    const expected = [];
    const publish = async (how, data) => {
      const id = await how(hub.hubUrl, publisher, { topic, data });
      expected.push({ data, lastEventId: id });
    };
    await publish(publishWithCurl, 'hello from curl');
    await publish(publishWithCli, 'two lines\nfrom sluice publish');
    await publish(publishWithFetch, 'third, from fetch');
    await forEachPage('before the restart', 3);
    for (const { name, page } of versions) {
      assert.deepEqual((await pageState(page)).received, expected, name);
    }

    // Every request the pages make to the hub from now on goes through this route. While
    // `hold` is set requests wait in `held`; otherwise they go on to the network.
    // - Held while the hub stops: a reconnection accepted during the hub's shutdown would keep
    //   it from exiting (a hub bug, tested on its own in shutdown.test.mjs).
    // - Let through while the hub is down: they fail, and the browser retries on its own.
    // - Held again while the new hub starts and the next updates are published, so that these
    //   are certainly published before the browser reconnects and must reach it through its
    //   Last-Event-ID from the durable history.
    const isHub = (url) => url.port === String(hub.port) && url.pathname === HUB_PATH;
    let hold = true;
    const held = [];
    const passed = [];
    const pass = async (route) => {
      passed.push(route.request().method());
      await route.continue();
    };
    const release = async () => {
      hold = false;
      for (const route of held.splice(0)) await pass(route);
    };
    await context.route(isHub, async (route) => {
      if (hold) held.push(route);
      else await pass(route);
    });
    // What the hub answers to each page's (re)connection. (Chromium adds Last-Event-ID below
    // what the route sees, so the request is judged by the hub's answer: with a cursor, the
    // hub names it in its version's response header.)
    for (const version of versions) {
      version.answers = [];
      version.page.on('response', async (response) => {
        if (isHub(new URL(response.url()))) {
          const cursor = await response.headerValue(version.cursorHeader);
          version.answers.push({ status: response.status(), cursor });
        }
      });
    }

    const { port } = hub;
    const exit = await hub.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `a clean exit on SIGTERM:\n${hub.log()}`);
    await release();
    // The streams ended; the browser tries again (and fails, nothing listens): at least twice
    // for each page.
    await waitFor(() => passed.length >= 4, {
      what: 'the browser to retry while the hub is down',
      describe: () => JSON.stringify(passed),
    });
    hold = true;

    hub = await startHub({
      port,
      secret: SECRET,
      store: `sqlite:${store.dir}/hub.db`,
      anonymous: true,
      corsOrigins: [pages.origin],
      retry: 500,
    });
    await publish(publishWithCurl, 'published while the browser was away (curl)');
    await publish(publishWithCli, 'published while the browser was away\n(sluice publish)');
    await publish(publishWithFetch, 'published while the browser was away (fetch)');

    await waitFor(() => held.length >= 2, { what: 'both pages to reconnect' });
    await release();
    await context.unroute(isHub);

    await forEachPage('after the replay', 6);
    // Live again after the replay.
    await publish(publishWithCurl, 'live after the restart (curl)');
    await publish(publishWithCli, 'live after the restart (sluice publish)');
    await publish(publishWithFetch, 'live after the restart (fetch)');
    await forEachPage('live after the restart', 9);

    assert.equal(new Set(expected.map((e) => e.lastEventId)).size, 9);
    for (const { name, page, answers } of versions) {
      const state = await pageState(page);
      assert.deepEqual(state.received, expected, `${name}: every update exactly once, in order`);
      assert.equal(state.readyState, 1, `${name}: OPEN`);
      assert.equal(state.opens, 2, `${name}: opened once, reopened once`);
      assert.deepEqual(
        answers,
        [{ status: 200, cursor: expected[2].lastEventId }],
        `${name}: the reconnection carried Last-Event-ID and the hub resumed after it`,
      );
    }
    assert.deepEqual(passed.slice(0, 2), ['GET', 'GET'], 'retried while the hub was down');

    await mkdir(ARTIFACTS, { recursive: true });
    await versions[1].page.screenshot({ path: path.join(ARTIFACTS, 'hub-browser.png'), fullPage: true });
    for (const { page } of versions) await page.close();
  });
});
