// Twelve live streams from one page: over HTTPS the server speaks HTTP/2 and all twelve share
// one connection; over plain HTTP/1.1 the browser opens at most six connections per site, so
// six streams hang, and the console says why.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { SECRET, launchBrowser, screenshot, sluice, startServer, waitFor } from './harness.mjs';

const STREAMS = 12;

/** Opens STREAMS EventSources on the page, one topic each; returns nothing. */
async function openStreams(page) {
  await page.evaluate((n) => {
    window.received = Array.from({ length: n }, () => []);
    window.opened = Array.from({ length: n }, () => false);
    window.sources = Array.from({ length: n }, (_, i) => {
      const source = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(`/tabs/${i}`)}`);
      source.onopen = () => {
        window.opened[i] = true;
      };
      source.onmessage = (event) => window.received[i].push(event.data);
      return source;
    });
  }, STREAMS);
}

describe('twelve event streams from one page', () => {
  let browser;
  let token;
  before(async () => {
    browser = await launchBrowser({ ignoreHTTPSErrors: true });
    token = await sluice('token', '--secret', SECRET, '--publish', '*');
  });
  after(async () => {
    await browser?.close();
  });

  it('all receive live updates over HTTP/2 (HTTPS), on one connection', async () => {
    const server = await startServer({ tls: true });
    try {
      const page = await browser.context.newPage();
      await page.goto(`${server.origin}/console`);
      const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      assert.equal(protocol, 'h2');
      assert.equal(await page.locator('[data-testid=http1-notice]').count(), 0, 'no warning over HTTP/2');
      await openStreams(page);
      await waitFor(() => page.evaluate(() => window.opened.every(Boolean)), { what: 'every stream to open' });
      // Publish from the page itself (it trusts the self-signed certificate).
      await page.evaluate(
        async ({ n, token }) => {
          for (let i = 0; i < n; i++) {
            const body = new URLSearchParams({ topic: `/tabs/${i}`, data: `update ${i}` });
            const response = await fetch('/.well-known/mercure', { method: 'POST', body, headers: { Authorization: `Bearer ${token}` } });
            if (!response.ok) throw new Error(`publish: ${response.status}`);
          }
        },
        { n: STREAMS, token },
      );
      await waitFor(() => page.evaluate(() => window.received.every((r) => r.length === 1)), { what: 'every stream to receive its update' });
      const received = await page.evaluate(() => window.received);
      assert.deepEqual(received, Array.from({ length: STREAMS }, (_, i) => [`update ${i}`]));
      const protocols = await page.evaluate(() =>
        performance
          .getEntriesByType('resource')
          .filter((e) => e.name.includes('/.well-known/mercure?topic='))
          .map((e) => e.nextHopProtocol),
      );
      assert.ok(protocols.every((p) => p === 'h2' || p === ''), `streams over h2: ${protocols}`);
      await screenshot(page, 'http2-twelve-streams.png');
      await page.close();
    } finally {
      await server.stop();
    }
  });

  it('over HTTP/1.1 only six connect, the rest hang, and the console warns', async () => {
    const server = await startServer();
    try {
      const page = await browser.context.newPage();
      await page.goto(`${server.origin}/console`);
      const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      assert.equal(protocol, 'http/1.1');
      await page.waitForSelector('[data-testid=http1-notice]');
      await openStreams(page);
      await waitFor(() => page.evaluate(() => window.opened.filter(Boolean).length === 6), { what: 'six streams to open' });
      // Published from outside the browser: the page itself has no connection left.
      for (let i = 0; i < STREAMS; i++) {
        const body = new URLSearchParams({ topic: `/tabs/${i}`, data: `update ${i}` });
        const response = await fetch(`${server.origin}/.well-known/mercure`, { method: 'POST', body, headers: { Authorization: `Bearer ${token}` } });
        assert.equal(response.status, 200);
      }
      await waitFor(() => page.evaluate(() => window.received.filter((r) => r.length === 1).length === 6), { what: 'six streams to receive' });
      // A moment more: the other six are still waiting for a connection.
      await new Promise((r) => setTimeout(r, 1000));
      const state = await page.evaluate(() => ({ opened: window.opened.filter(Boolean).length, received: window.received.filter((r) => r.length > 0).length }));
      assert.deepEqual(state, { opened: 6, received: 6 });
      await screenshot(page, 'http1-six-streams.png');
      await page.evaluate(() => window.sources.forEach((s) => s.close()));
      await page.close();
    } finally {
      await server.stop();
    }
  });
});
