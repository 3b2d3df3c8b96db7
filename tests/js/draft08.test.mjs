// Mercure draft-08 through a third-party client, the `eventsource` npm package, beside a
// draft-07 client on the same hub: URL pattern and exact matchers, access tokens in the
// Authorization header and in the __Secure-mercure_access_token cookie, private updates,
// subscription events (`event: mercure`), and resuming with last_event_id, answered with
// Mercure-Last-Event-ID. Updates are published by the real `curl` with an access token.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { subscribe, tracker } from './client.mjs';
import { mintAccessToken, mintToken, publishWithCurl, startHub } from './hub.mjs';

const SECRET = 'draft-08-test-secret';
const PATTERN = 'https://example.com/books/:id';
const book = (n) => `https://example.com/books/${n}`;
const strip = ({ type, data, lastEventId }) => ({ type, data, lastEventId });

describe('draft-08 and draft-07 clients (eventsource v5) on one hub', () => {
  let hub;
  let publisher;
  const { track, closeAll } = tracker();

  before(async () => {
    hub = await startHub({ secret: SECRET, store: 'memory', anonymous: true });
    publisher = await mintAccessToken({ secret: SECRET, audience: hub.hubUrl, publish: ['*'] });
  });

  after(async () => {
    closeAll();
    if (hub) await hub.stop();
  });

  test('both versions receive the same updates; private ones follow each version\'s token', async () => {
    const v8Url = `${hub.hubUrl}?match_urlpattern=${encodeURIComponent(PATTERN)}`;
    const v7Url = `${hub.hubUrl}?topic=${encodeURIComponent('https://example.com/books/{id}')}`;
    const reader = await mintAccessToken({
      secret: SECRET,
      audience: hub.hubUrl,
      subscribePatterns: [PATTERN],
    });
    const v7Reader = await mintToken({ secret: SECRET, subscribe: ['https://example.com/books/{id}'] });
    const v8Anonymous = track(subscribe(v8Url));
    const v8Header = track(subscribe(v8Url, { headers: { Authorization: `Bearer ${reader}` } }));
    const v8Cookie = track(subscribe(v8Url, { headers: { Cookie: `__Secure-mercure_access_token=${reader}` } }));
    const v7 = track(subscribe(v7Url, { headers: { Authorization: `Bearer ${v7Reader}` } }));
    const all = [v8Anonymous, v8Header, v8Cookie, v7];
    await Promise.all(all.map((sub) => sub.opened()));

    const sent = [];
    for (const [n, isPrivate] of [[1, false], [2, true], [3, false]]) {
      const data = `book ${n}${isPrivate ? ' (private)' : ''}\nsecond line`;
      const id = await publishWithCurl(hub.hubUrl, publisher, { topic: book(n), data, isPrivate });
      sent.push({ type: 'message', data, lastEventId: id, isPrivate });
    }
    // Not matched by :id (it does not cross a slash).
    await publishWithCurl(hub.hubUrl, publisher, { topic: `${book(4)}/reviews`, data: 'a review' });
    const everything = sent.map(strip);
    const publicOnly = sent.filter((s) => !s.isPrivate).map(strip);
    await Promise.all([v8Anonymous.count(2), v8Header.count(3), v8Cookie.count(3), v7.count(3)]);
    assert.deepEqual(v8Anonymous.received, publicOnly, 'anonymous draft-08: public updates only');
    assert.deepEqual(v8Header.received, everything, 'access token in the header');
    assert.deepEqual(v8Cookie.received, everything, 'access token in the cookie');
    assert.deepEqual(v7.received, everything, 'draft-07 token, draft-07 subscription');

    // Resume: last_event_id in the query, answered with Mercure-Last-Event-ID.
    const after = sent[0].lastEventId;
    const resumed = track(
      subscribe(`${v8Url}&last_event_id=${encodeURIComponent(after)}`, {
        headers: { Authorization: `Bearer ${reader}` },
      }),
    );
    await resumed.count(2);
    assert.deepEqual(resumed.received, everything.slice(1));
    assert.equal(resumed.responses[0].mercureLastEventId, after);
    assert.equal(resumed.responses[0].lastEventId, null, 'draft-08 answers in its own header');
    const unknown = track(subscribe(`${v8Url}&last_event_id=no-such-id`));
    await unknown.count(2);
    assert.equal(unknown.responses[0].mercureLastEventId, 'earliest');
  });

  test('subscription events arrive as event: mercure, in plain JSON', async () => {
    const events = '/.well-known/mercure/subscriptions/*';
    const watcherToken = await mintAccessToken({
      secret: SECRET,
      audience: hub.hubUrl,
      subscribePatterns: [events],
    });
    const watcher = track(
      subscribe(`${hub.hubUrl}?match_urlpattern=${encodeURIComponent(events)}`, {
        headers: { Authorization: `Bearer ${watcherToken}` },
        types: ['mercure'],
      }),
    );
    await watcher.opened();
    const topic = 'https://example.com/watched';
    const watched = track(subscribe(`${hub.hubUrl}?match=${encodeURIComponent(topic)}`));
    await watched.opened();
    const find = (active) =>
      watcher.received
        .filter((e) => e.type === 'mercure')
        .map((e) => JSON.parse(e.data))
        .find((doc) => doc.match === topic && doc.active === active);
    await watcher.count(2);
    const created = find(true);
    assert.ok(created, watcher.describe());
    assert.equal(created.type, 'subscription');
    assert.equal(created.match_type, 'exact');
    assert.match(created.subscriber, /^urn:uuid:/);
    assert.equal(
      created.id,
      `/.well-known/mercure/subscriptions/exact/${encodeURIComponent(topic)}/${encodeURIComponent(created.subscriber)}`,
    );
    assert.ok(watcher.received.every((e) => e.type === 'mercure'), 'never on onmessage');
    watched.close();
    // The hub notices the closed connection and says so.
    await watcher.count(3);
    assert.equal(find(false)?.id, created.id, watcher.describe());
  });
});
