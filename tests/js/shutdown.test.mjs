// SIGTERM with subscribers that reconnect: the hub ends every event stream, and every client
// that was subscribed reconnects (after `retry:` ms). The hub must still exit.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventSource } from 'eventsource';

import { startHub, tempDir, waitFor } from './hub.mjs';

// Regression: subscriptions accepted while the hub was shutting down were never ended, so
// the process never exited. The registry now refuses subscribers once shut down (503).

let dir;
let hub;
let source;

before(async () => {
  dir = await tempDir('shutdown');
});

after(async () => {
  source?.close();
  if (hub) await hub.stop({ grace: 1_000, backtrace: false });
  await dir?.remove();
});

test('SIGTERM: the hub exits although its subscriber reconnects at once (retry: 0)', async () => {
  hub = await startHub({ store: `sqlite:${dir.dir}/hub.db`, retry: 0 });
  const answers = [];
  source = new EventSource(`${hub.hubUrl}?topic=${encodeURIComponent('https://example.com/shutdown')}`, {
    fetch: async (input, init) => {
      const res = await fetch(input, init);
      answers.push(res.status);
      return res;
    },
  });
  let opens = 0;
  source.addEventListener('open', () => opens++);
  await waitFor(() => opens === 1, { what: 'the subscription to open' });

  const exit = await hub.stop({ grace: 5_000, backtrace: false });
  assert.deepEqual(
    exit,
    { code: 0, signal: null },
    `sluice serve did not exit within 5 s of SIGTERM; the client's connections were answered ${JSON.stringify(answers)} ` +
      `(a second 200 is the reconnection accepted during the shutdown)\n${hub.log()}`,
  );
});
