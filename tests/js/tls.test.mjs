// Subscriptions over HTTPS/1.1, read by TLS stacks other than the server's own: the real
// `curl` (OpenSSL) in TLS 1.2 and 1.3 with each kind of AEAD, and Debian's chromium
// (BoringSSL). Once a subscription's request is read, the server seals its records itself
// rather than through rustls (crates/server/src/tls/records.rs): these clients check that
// what it writes is TLS.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_ARGS } from './chromium.mjs';
import { HUB_PATH, mintToken, publishWithCurl, startHub, tempDir, waitFor } from './hub.mjs';

const execFileAsync = promisify(execFile);
const SECRET = 'tls-test-secret';
/** More than one TLS record (2^14 bytes) of data. */
const BIG = 'b'.repeat(40_000);

describe('subscriptions over TLS, read by OpenSSL and BoringSSL', () => {
  let dir;
  let cert;
  let hub;
  let token;

  before(async () => {
    dir = await tempDir('tls');
    cert = path.join(dir.dir, 'cert.pem');
    const key = path.join(dir.dir, 'key.pem');
    await execFileAsync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ]);
    hub = await startHub({ secret: SECRET, args: ['--tls-cert', cert, '--tls-key', key], ca: cert });
    token = await mintToken({ secret: SECRET, publish: ['*'] });
  });

  after(async () => {
    if (hub) await hub.stop();
    await dir?.remove();
  });

  /** Publishes three small updates, one larger than a record, and `last`. */
  async function publishAll(topic) {
    for (const data of ['small 0', 'small 1', 'small 2', BIG, 'last']) {
      await publishWithCurl(hub.hubUrl, token, { topic, data, ca: cert });
    }
  }

  function assertAll(body, what) {
    for (const data of ['small 0', 'small 1', 'small 2', BIG, 'last']) {
      assert.ok(body.includes(`data: ${data}\n\n`), `${what}: ${data.slice(0, 20)} arrived whole`);
    }
  }

  const cases = [
    ['TLS 1.2, AES-256-GCM', ['--tlsv1.2', '--tls-max', '1.2'], 'TLSv1.2 / ECDHE-ECDSA-AES256-GCM-SHA384'],
    ['TLS 1.2, ChaCha20-Poly1305', ['--tlsv1.2', '--tls-max', '1.2', '--ciphers', 'ECDHE-ECDSA-CHACHA20-POLY1305'], 'TLSv1.2 / ECDHE-ECDSA-CHACHA20-POLY1305'],
    ['TLS 1.3, AES-256-GCM', ['--tlsv1.3'], 'TLSv1.3 / TLS_AES_256_GCM_SHA384'],
    ['TLS 1.3, AES-128-GCM', ['--tlsv1.3', '--tls13-ciphers', 'TLS_AES_128_GCM_SHA256'], 'TLSv1.3 / TLS_AES_128_GCM_SHA256'],
    ['TLS 1.3, ChaCha20-Poly1305', ['--tlsv1.3', '--tls13-ciphers', 'TLS_CHACHA20_POLY1305_SHA256'], 'TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256'],
  ];
  for (const [name, flags, negotiated] of cases) {
    test(`curl over ${name} reads every update of its subscription`, async () => {
      const topic = `https://example.com/tls/${encodeURIComponent(name)}`;
      const url = `${hub.hubUrl}?topic=${encodeURIComponent(topic)}`;
      const curl = spawn('curl', ['--verbose', '--no-buffer', '--http1.1', ...flags, '--cacert', cert, url]);
      let body = '';
      let log = '';
      curl.stdout.setEncoding('utf8').on('data', (chunk) => (body += chunk));
      curl.stderr.setEncoding('utf8').on('data', (chunk) => (log += chunk));
      try {
        await waitFor(() => log.includes('< content-type: text/event-stream'), {
          what: 'the subscription to open',
          describe: () => log,
        });
        assert.ok(log.includes(`SSL connection using ${negotiated}`), log);
        assert.ok(log.includes('< connection: close'), 'served past hyper');
        await publishAll(topic);
        await waitFor(() => body.includes('data: last\n\n'), {
          what: 'the last update',
          describe: () => `${body.length} bytes; ${log.slice(-2000)}`,
        });
        assertAll(body, name);
        assert.equal(curl.exitCode, null, 'still subscribed');
      } finally {
        curl.kill();
      }
    });
  }

  test("chromium's EventSource over HTTP/1.1 and TLS reads every update", async () => {
    // HTTP/2 off: over it the stream is hyper's, not sealed here.
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [...CHROMIUM_ARGS, '--disable-http2', '--ignore-certificate-errors'],
    });
    try {
      const page = await browser.newPage();
      await page.goto(`${hub.origin}/healthz`);
      const topic = 'https://example.com/tls/browser';
      await page.evaluate((url) => {
        window.got = [];
        window.opened = false;
        const source = new EventSource(url);
        source.onopen = () => (window.opened = true);
        source.onmessage = (event) => window.got.push(event.data);
      }, `${HUB_PATH}?topic=${encodeURIComponent(topic)}`);
      await page.waitForFunction(() => window.opened, null, { timeout: 30_000 });
      await publishAll(topic);
      await page.waitForFunction(() => window.got.includes('last'), null, { timeout: 30_000 });
      const got = await page.evaluate(() => window.got);
      assert.deepEqual(got, ['small 0', 'small 1', 'small 2', BIG, 'last']);
      // The origin's connections are HTTP/1.1, whose subscriptions are served past hyper.
      const protocol = await page.evaluate(
        () => performance.getEntriesByType('navigation')[0].nextHopProtocol,
      );
      assert.equal(protocol, 'http/1.1');
    } finally {
      await browser.close();
    }
  });
});
