// The hub seen by a third-party client: the `eventsource` npm package (v5, WHATWG
// EventSource for Node), with updates published by the real `curl`, by `sluice publish` and
// by fetch.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Gate, subscribe, tracker } from './client.mjs';
import {
  mintToken,
  publishWithCli,
  publishWithCurl,
  publishWithFetch,
  startHub,
  tempDir,
  waitFor,
} from './hub.mjs';

const SECRET = 'eventsource-test-secret';
const TEMPLATE = 'https://example.com/books/{id}';
const book = (n) => `https://example.com/books/${n}`;
const TYPE = 'book-updated';

describe('eventsource v5 against sluice', () => {
  let hub;
  let publisher;
  let subscriberToken;
  const { track, closeAll } = tracker();

  before(async () => {
    hub = await startHub({ secret: SECRET, store: 'memory', anonymous: true });
    publisher = await mintToken({ secret: SECRET, publish: ['*'] });
    subscriberToken = await mintToken({ secret: SECRET, subscribe: [TEMPLATE] });
  });

  after(async () => {
    closeAll();
    if (hub) await hub.stop();
  });

  test('URI template subscription: curl and sluice publish, ids, types, multi-line data, private, resume', async () => {
    const url = `${hub.hubUrl}?topic=${encodeURIComponent(TEMPLATE)}`;
    const anon = track(subscribe(url, { types: [TYPE] }));
    const withQueryToken = track(
      subscribe(`${url}&authorization=${encodeURIComponent(subscriberToken)}`, { types: [TYPE] }),
    );
    const withHeaderToken = track(
      subscribe(url, { types: [TYPE], headers: { Authorization: `Bearer ${subscriberToken}` } }),
    );
    // The hub registers the subscription before it answers, so once open nothing is missed.
    await Promise.all([anon.opened(), withQueryToken.opened(), withHeaderToken.opened()]);
    for (const sub of [anon, withQueryToken, withHeaderToken]) {
      assert.equal(sub.responses[0].status, 200);
      assert.equal(sub.responses[0].lastEventId, null, 'no cursor sent: no Last-Event-ID header');
    }

    const multiLine = 'line one\nline two\n\n  line four, indented\nlast: with a colon';
    const published = [];
    // 1. curl, id assigned by the hub.
    const id1 = await publishWithCurl(hub.hubUrl, publisher, { topic: book(1), data: 'first book' });
    assert.match(id1, /\S/, 'curl got the id as the response body');
    published.push({ type: 'message', data: 'first book', lastEventId: id1, private: false });
    // Not matched by the template: nobody receives it.
    await publishWithCurl(hub.hubUrl, publisher, { topic: 'https://example.com/authors/1', data: 'an author' });
    // 2. sluice publish, multi-line data.
    const id2 = await publishWithCli(hub.hubUrl, publisher, { topic: book(2), data: multiLine });
    published.push({ type: 'message', data: multiLine, lastEventId: id2, private: false });
    // 3. curl, typed, with a publisher id; the alternate topic is the one that matches.
    const id3 = await publishWithCurl(hub.hubUrl, publisher, {
      topic: ['urn:example:catalogue', book(3)],
      data: '{"title":"Typed"}',
      id: 'book-3-v1',
      type: TYPE,
    });
    assert.equal(id3, 'book-3-v1', 'the hub keeps the publisher id');
    published.push({ type: TYPE, data: '{"title":"Typed"}', lastEventId: id3, private: false });
    // 4. sluice publish, private: only token holders receive it.
    const id4 = await publishWithCli(hub.hubUrl, publisher, {
      topic: book(4),
      data: 'private book',
      isPrivate: true,
    });
    published.push({ type: 'message', data: 'private book', lastEventId: id4, private: true });
    // 5. curl, public again: marks the end for the anonymous subscriber.
    const id5 = await publishWithCurl(hub.hubUrl, publisher, { topic: book(5), data: 'fifth book' });
    published.push({ type: 'message', data: 'fifth book', lastEventId: id5, private: false });

    const ids = published.map((p) => p.lastEventId);
    assert.equal(new Set(ids).size, ids.length, `ids are distinct: ${ids}`);
    const strip = ({ type, data, lastEventId }) => ({ type, data, lastEventId });
    const everything = published.map(strip);
    const publicOnly = published.filter((p) => !p.private).map(strip);

    await Promise.all([anon.count(publicOnly.length), withQueryToken.count(5), withHeaderToken.count(5)]);
    assert.deepEqual(anon.received, publicOnly, 'anonymous: public updates in order, no private one');
    assert.deepEqual(withQueryToken.received, everything, 'token in ?authorization=: all five');
    assert.deepEqual(withHeaderToken.received, everything, 'token in Authorization header: all five');

    // Resume. Close, publish three more, reconnect with the last id seen.
    anon.close();
    withHeaderToken.close();
    const lastSeen = anon.received.at(-1).lastEventId;
    assert.equal(lastSeen, id5);
    const missed = [];
    for (let n = 6; n <= 8; n++) {
      const publish = n === 7 ? publishWithCurl : publishWithCli;
      const data = `missed book ${n}`;
      const id = await publish(hub.hubUrl, publisher, { topic: book(n), data });
      missed.push({ type: 'message', data, lastEventId: id });
    }

    const byHeader = track(subscribe(url, { types: [TYPE], headers: { 'Last-Event-ID': lastSeen } }));
    const byQuery = track(subscribe(`${url}&lastEventID=${encodeURIComponent(lastSeen)}`, { types: [TYPE] }));
    await Promise.all([byHeader.count(3), byQuery.count(3)]);
    for (const [name, sub] of [['Last-Event-ID header', byHeader], ['lastEventID query', byQuery]]) {
      assert.equal(sub.responses[0].status, 200);
      assert.equal(sub.responses[0].lastEventId, lastSeen, `${name}: response names the cursor`);
      assert.deepEqual(sub.received, missed, `${name}: exactly the three missed updates`);
    }
    // And then live, with nothing extra in between.
    const live = await publishWithFetch(hub.hubUrl, publisher, { topic: book(9), data: 'live book' });
    const liveEvent = { type: 'message', data: 'live book', lastEventId: live };
    await Promise.all([byHeader.count(4), byQuery.count(4), withQueryToken.count(9)]);
    assert.deepEqual(byHeader.received, [...missed, liveEvent]);
    assert.deepEqual(byQuery.received, [...missed, liveEvent]);
    // The subscriber that stayed connected saw everything once, in order.
    assert.deepEqual(withQueryToken.received, [...everything, ...missed, liveEvent]);
  });

  test('earliest replays the whole history, private updates only with a token', async () => {
    const topic = 'https://example.com/earliest/{n}';
    const sent = [];
    for (let n = 1; n <= 3; n++) {
      const data = `history ${n}`;
      const isPrivate = n === 2;
      const id = await publishWithCurl(hub.hubUrl, publisher, {
        topic: `https://example.com/earliest/${n}`,
        data,
        isPrivate,
      });
      sent.push({ type: 'message', data, lastEventId: id, isPrivate });
    }
    const token = await mintToken({ secret: SECRET, subscribe: [topic] });
    const url = `${hub.hubUrl}?topic=${encodeURIComponent(topic)}&lastEventID=earliest`;
    const anon = track(subscribe(url));
    const authed = track(subscribe(url, { headers: { Authorization: `Bearer ${token}` } }));
    await Promise.all([anon.count(2), authed.count(3)]);
    const strip = ({ type, data, lastEventId }) => ({ type, data, lastEventId });
    assert.deepEqual(anon.received, sent.filter((s) => !s.isPrivate).map(strip));
    assert.deepEqual(authed.received, sent.map(strip));
    assert.equal(anon.responses[0].lastEventId, 'earliest');
    anon.close();
    authed.close();
  });
});

describe('eventsource v5 reconnects across a hub restart (durable store)', () => {
  let dir;
  let hub;
  let sub;

  before(async () => {
    dir = await tempDir('es-restart');
  });

  after(async () => {
    sub?.close();
    if (hub) await hub.stop();
    await dir?.remove();
  });

  test('the client reconnects on its own with Last-Event-ID and misses nothing', async () => {
    const store = `sqlite:${dir.dir}/hub.db`;
    hub = await startHub({ secret: SECRET, store, retry: 300 });
    const publisher = await mintToken({ secret: SECRET, publish: ['*'] });
    const topic = 'https://example.com/restart';
    const gate = new Gate();
    sub = subscribe(`${hub.hubUrl}?topic=${encodeURIComponent(topic)}`, { gate });
    await sub.opened(1);

    const expected = [];
    const publish = async (data) => {
      const id = await publishWithCurl(hub.hubUrl, publisher, { topic, data });
      expected.push({ type: 'message', data, lastEventId: id });
    };
    await publish('before restart 1');
    await publish('before restart 2');
    await sub.count(2);

    // The client's reconnection waits at the gate until the new hub holds two more updates:
    // they can only reach it through its Last-Event-ID, from the durable history. (Closed
    // during the stop too: a reconnection accepted while the hub shuts down keeps it from
    // exiting, a hub bug tested on its own in shutdown.test.mjs.)
    gate.close();
    const { port } = hub;
    const status = await hub.stop();
    assert.deepEqual(status, { code: 0, signal: null }, `a clean exit on SIGTERM:\n${hub.log()}`);
    hub = await startHub({ port, secret: SECRET, store, retry: 300 });
    await publish('after restart 1');
    await publish('after restart 2');
    await waitFor(() => gate.waiting > 0, { what: 'the client to reconnect', describe: sub.describe });
    gate.open();
    await sub.count(4);
    await publish('after restart 3');
    await sub.count(5);
    assert.deepEqual(sub.received, expected);
    assert.equal(sub.opens(), 2, 'reconnected once');
    assert.equal(sub.responses.length, 2);
    assert.equal(sub.responses[1].status, 200);
    assert.equal(sub.responses[1].sentLastEventId, expected[1].lastEventId, 'sent Last-Event-ID');
    assert.equal(sub.responses[1].lastEventId, expected[1].lastEventId, 'resumed from it');
  });
});
