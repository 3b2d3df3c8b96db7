// The Durable Streams server conformance suite (npm @durable-streams/server-conformance-tests,
// unchanged) against `sluice serve --open-streams`: once on SQLite, once on a node of a Redis
// hub. The suite's long-poll tests wait for a 204 within five seconds, so the servers time
// long-polls out after two (`--streams-long-poll 2`) and the suite is told so.

import { afterAll, beforeAll, describe } from 'vitest';
import { runConformanceTests } from '@durable-streams/server-conformance-tests';

import { startHub, startRedis, tempDir } from '../js/hub.mjs';

const LONG_POLL_SECONDS = 2;

const stores = {
  async sqlite() {
    const data = await tempDir('durable-sqlite');
    return { store: `sqlite:${data.dir}/sluice.db`, stop: data.remove };
  },
  async redis() {
    const redis = await startRedis();
    return { store: redis.url, stop: redis.stop };
  },
};

for (const [name, makeStore] of Object.entries(stores)) {
  describe(`Durable Streams conformance on ${name}`, () => {
    const options = { baseUrl: '', longPollTimeoutMs: LONG_POLL_SECONDS * 1000 };
    let store;
    let hub;
    beforeAll(async () => {
      store = await makeStore();
      hub = await startHub({
        store: store.store,
        args: ['--open-streams', '--streams-long-poll', String(LONG_POLL_SECONDS)],
      });
      options.baseUrl = hub.origin;
    });
    afterAll(async () => {
      await hub?.stop();
      await store?.stop();
    });
    runConformanceTests(options);
  });
}
