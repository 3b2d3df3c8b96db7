// Who may write and read Durable Streams when they are not open: the hub's tokens, a stream
// standing for the topic `/v1/stream/{path}`. And what a malformed request gets: the status the
// protocol names and a JSON body saying what was wrong, with the stream left as it was.

import assert from 'node:assert/strict';
import { afterAll, beforeAll, describe, test } from 'vitest';

import { mintToken, startHub } from '../js/hub.mjs';

const SECRET = 'durable-streams-test-secret';

describe('tokens govern streams as they govern topics', () => {
  let hub;
  let writer;
  let reader;
  let other;
  beforeAll(async () => {
    hub = await startHub({ secret: SECRET });
    writer = await mintToken({ secret: SECRET, publish: ['/v1/stream/chat/{id}'] });
    reader = await mintToken({ secret: SECRET, subscribe: ['/v1/stream/chat/{id}'] });
    other = await mintToken({ secret: SECRET, publish: ['/v1/stream/other'] });
  });
  afterAll(() => hub?.stop());

  const call = (path, token, init = {}) =>
    fetch(`${hub.origin}/v1/stream/${path}`, {
      ...init,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...init.headers },
    });

  async function refused(response, status, code) {
    assert.equal(response.status, status);
    const body = await response.json();
    assert.equal(body.error.code, code, JSON.stringify(body));
    assert.ok(body.error.message.length > 0);
  }

  test('a publisher token granting the path writes; others are refused with a clear error', async () => {
    const put = { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'hi' };
    await refused(await call('chat/1', null, put), 401, 'unauthorized');
    await refused(await call('chat/1', 'not.a.jwt', put), 401, 'invalid_token');
    await refused(await call('chat/1', other, put), 403, 'insufficient_scope');
    await refused(await call('chat/1', reader, put), 403, 'insufficient_scope');
    assert.equal((await call('chat/1', writer, put)).status, 201);
    const post = { method: 'POST', headers: { 'content-type': 'text/plain' }, body: ' there' };
    await refused(await call('chat/1', reader, post), 403, 'insufficient_scope');
    assert.equal((await call('chat/1', writer, post)).status, 204);
  });

  test('a subscriber token granting the path reads; without one, nothing is shown', async () => {
    await refused(await call('chat/1?offset=-1', null), 401, 'unauthorized');
    await refused(await call('chat/1?offset=-1', other), 403, 'insufficient_scope');
    const read = await call('chat/1?offset=-1', reader);
    assert.equal(read.status, 200);
    assert.equal(await read.text(), 'hi there');
    assert.match(read.headers.get('cache-control'), /^private/, 'a guarded stream is not cached publicly');
    assert.equal((await call('chat/1', reader, { method: 'HEAD' })).status, 200);
    await refused(await call('chat/1', reader, { method: 'DELETE' }), 403, 'insufficient_scope');
  });

  test('malformed requests get the protocol\'s status and a JSON body, and change nothing', async () => {
    const json = (path, init) => call(path, writer, { ...init, headers: { 'content-type': 'application/json', ...init.headers } });
    assert.equal((await json('chat/j', { method: 'PUT', body: '[{"a":1}]' })).status, 201);
    await refused(await json('chat/j', { method: 'POST', body: '{"a":' }), 400, 'invalid_stream_request');
    await refused(await json('chat/j', { method: 'POST', body: '[]' }), 400, 'invalid_stream_request');
    await refused(await call('chat/j?offset=garbage', reader), 400, 'invalid_stream_request');
    await refused(await call('chat/j?offset=-1&live=forever', reader), 400, 'invalid_stream_request');
    await refused(await call('chat/j?live=long-poll', reader), 400, 'invalid_stream_request');
    await refused(await call('chat/j?offset=-1&offset=now', reader), 400, 'invalid_stream_request');
    await refused(await json('chat/j', { method: 'POST', body: '{}', headers: { 'producer-id': 'p' } }), 400, 'invalid_producer');
    await refused(await json('chat/j', { method: 'PUT', body: '', headers: { 'stream-ttl': '03600' } }), 400, 'invalid_expiry');
    const big = new Uint8Array(9 * 1024 * 1024);
    await refused(await call('chat/j', writer, { method: 'POST', headers: { 'content-type': 'application/json' }, body: big }), 413, 'body_too_large');
    await refused(await call('chat//b', writer, { method: 'PUT' }), 400, 'invalid_stream_path');
    await refused(await call('chat/missing?offset=-1', reader), 404, 'not_found');
    const unchanged = await call('chat/j?offset=-1', reader);
    assert.deepEqual(await unchanged.json(), [{ a: 1 }]);
  });
});
