// The official TypeScript client (npm @durable-streams/client) against Sluice as its server:
// an idempotent producer writing and live readers (SSE and long-poll) reading, across a
// restart, across two nodes of one Redis, and across a kill -9 in the middle of appends. Each
// reader must end with every message exactly once, in order.

import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'vitest';
import { DurableStream, IdempotentProducer, stream } from '@durable-streams/client';

import { startHub, startRedis, tempDir, waitFor } from '../js/hub.mjs';

const cleanups = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** A `sluice serve --open-streams` on `store`, stopped after the test. */
async function node(store, port) {
  const hub = await startHub({ store, port, args: ['--open-streams'] });
  cleanups.push(() => hub.stop());
  return hub;
}

async function sqliteStore() {
  const data = await tempDir('durable-client');
  cleanups.push(data.remove);
  return `sqlite:${data.dir}/sluice.db`;
}

/** What each reader's client gave up on, by its items array. */
const errorsOf = new WeakMap();

/** A live reader of `url` from the start; `items` grows as batches arrive. */
async function reader(url, live) {
  const items = [];
  // Errors the client gives up on are kept, for the failure message.
  const onError = (err) => {
    errorsOf.set(items, [...(errorsOf.get(items) ?? []), String(err?.cause ?? err)]);
  };
  const res = await stream({ url, offset: '-1', live, json: true, onError });
  res.subscribeJson((batch) => {
    items.push(...batch.items);
  });
  cleanups.push(() => res.cancel());
  return { items, res };
}

const numbers = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => ({ n: from + i }));

async function produce(producer, from, to) {
  for (const item of numbers(from, to)) producer.append(JSON.stringify(item));
  await producer.flush();
}

/** `fetch`, retried every 50 ms while the server cannot be reached (counted in `retries`). */
let retries = 0;
async function retryingFetch(url, init) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (err) {
      retries += 1;
      if (attempt >= 600) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function until(items, count, what) {
  return waitFor(() => items.length >= count, {
    timeout: 30_000,
    what,
    describe: () => `${items.length} items: ${JSON.stringify(items.slice(-3))}; errors: ${errorsOf.get(items) ?? 'none'}`,
  });
}

describe('the official TypeScript client', () => {
  test('live readers resume across a restart with nothing lost or doubled', async () => {
    const store = await sqliteStore();
    let hub = await node(store);
    const url = `${hub.origin}/v1/stream/chat/restart`;
    const handle = await DurableStream.create({ url, contentType: 'application/json' });
    const producer = new IdempotentProducer(handle, 'writer-1');
    await produce(producer, 1, 40);

    const sse = await reader(url, 'sse');
    const longPoll = await reader(url, 'long-poll');
    await until(sse.items, 40, 'the SSE reader to catch up');
    await until(longPoll.items, 40, 'the long-poll reader to catch up');

    await hub.stop();
    hub = await node(store, hub.port);
    // The producer's state survived with the stream: its next batches are accepted as new.
    await produce(producer, 41, 80);
    await until(sse.items, 80, 'the SSE reader to resume');
    await until(longPoll.items, 80, 'the long-poll reader to resume');
    assert.deepEqual(sse.items, numbers(1, 80));
    assert.deepEqual(longPoll.items, numbers(1, 80));

    await handle.close();
    await Promise.all([sse.res.closed, longPoll.res.closed]);
    const head = await handle.head();
    assert.equal(head.streamClosed, true);
  });

  test('a stream written on one node is read live on another, and resumed on a third', async () => {
    const redis = await startRedis();
    cleanups.push(redis.stop);
    const [a, b, c] = [await node(redis.url), await node(redis.url), await node(redis.url)];
    const path = '/v1/stream/chat/two-nodes';
    const handle = await DurableStream.create({ url: `${a.origin}${path}`, contentType: 'application/json' });
    const producer = new IdempotentProducer(handle, 'writer-1');

    const onB = await reader(`${b.origin}${path}`, 'sse');
    const pollOnB = await reader(`${b.origin}${path}`, 'long-poll');
    await produce(producer, 1, 30);
    await until(onB.items, 30, 'the reader on node B');
    await until(pollOnB.items, 30, 'the long-poll reader on node B');
    assert.deepEqual(onB.items, numbers(1, 30));
    assert.deepEqual(pollOnB.items, numbers(1, 30));

    // An offset node B gave resumes on node C.
    const { offset } = await (await DurableStream.connect({ url: `${b.origin}${path}` })).head();
    await produce(producer, 31, 45);
    const rest = await stream({ url: `${c.origin}${path}`, offset, live: false, json: true });
    assert.deepEqual(await rest.json(), numbers(31, 45));
  });

  test('a kill -9 in the middle of an idempotent producer\'s appends loses and doubles nothing', async () => {
    const store = await sqliteStore();
    let hub = await node(store);
    const url = `${hub.origin}/v1/stream/jobs/kill`;
    const handle = await DurableStream.create({ url, contentType: 'application/json' });
    const errors = [];
    // The client leaves retrying a failed request to the application (its producer says so):
    // retrying is safe because the server deduplicates by (producer, epoch, seq).
    const producer = new IdempotentProducer(handle, 'writer-1', {
      fetch: retryingFetch,
      lingerMs: 1,
      maxBatchBytes: 128,
      onError: (err) => errors.push(err),
    });
    const total = 3000;
    for (const item of numbers(1, total)) producer.append(JSON.stringify(item));
    // Kill the server while batches are in flight, then bring it back on the same port.
    await waitFor(async () => (await handle.head()).offset !== '0000000000000000_0000000000000000', {
      what: 'the first batches to land',
    });
    await hub.kill();
    hub = await node(store, hub.port);
    await producer.flush();
    assert.deepEqual(errors, []);
    assert.ok(retries > 0, 'the kill came while batches were in flight');

    const all = await stream({ url, offset: '-1', live: false, json: true });
    const items = await all.json();
    assert.equal(items.length, total, 'every message once');
    assert.deepEqual(items, numbers(1, total));
  });
});
