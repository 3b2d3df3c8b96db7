// SIGTERM with subscribers that reconnect: the hub ends every event stream, and every client
// that was subscribed reconnects (after `retry:` ms). The hub must still exit.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventSource } from 'eventsource';

import { startHub, tempDir, waitFor } from './hub.mjs';

// KNOWN HUB BUG (expected to fail, hence `todo`; remove it once fixed): sluice_server::serve
// runs its shutdown work (AppState::begin_shutdown, then Hub::shut_down = Registry::shut_down,
// which ends the live feeds, and then the store's close, a WAL checkpoint for SQLite) inside
// the future given to axum's with_graceful_shutdown, so the listener keeps accepting until all
// of that is done. A client whose stream was just ended reconnects in that window; its
// subscription registers after Registry::shut_down (register() does not refuse once shut
// down), so nothing ever ends it, and axum's graceful shutdown waits for it forever: the
// process does not exit on SIGTERM. With --store sqlite and a client that reconnects at once
// this happens every time; with `retry: 500` it happens whenever the checkpoint takes longer
// than 500 ms (a busy disk). A fix: refuse subscriptions once shutting down (a flag checked
// under the registry's lock in register(), and a 503 with Retry-After from the route), or end
// the streams only after axum stopped accepting.
const BUG =
  'hub bug: a subscription accepted while the hub shuts down is never ended, so SIGTERM never exits (see the comment above)';

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

test('SIGTERM: the hub exits although its subscriber reconnects at once (retry: 0)', { todo: BUG }, async () => {
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
