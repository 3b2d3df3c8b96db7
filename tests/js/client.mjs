// A third-party EventSource client as the tests drive it: the `eventsource` npm package (v5,
// WHATWG EventSource for Node), recording what it receives and what the hub answered.

import { EventSource } from 'eventsource';

import { waitFor } from './hub.mjs';

/**
 * Opens an EventSource and records every dispatched event (`message` and `types`) in one
 * ordered list, and the response headers of each connection it makes.
 */
export function subscribe(url, { headers = {}, types = [], gate } = {}) {
  const received = [];
  const responses = [];
  const errors = [];
  const es = new EventSource(url, {
    fetch: async (input, init) => {
      if (gate) await gate.pass();
      const res = await fetch(input, { ...init, headers: { ...init.headers, ...headers } });
      responses.push({
        status: res.status,
        sentLastEventId: new Headers(init.headers).get('last-event-id'),
        lastEventId: res.headers.get('last-event-id'),
        mercureLastEventId: res.headers.get('mercure-last-event-id'),
      });
      return res;
    },
  });
  const record = (event) =>
    received.push({ type: event.type, data: event.data, lastEventId: event.lastEventId });
  es.addEventListener('message', record);
  for (const type of types) es.addEventListener(type, record);
  let opens = 0;
  es.addEventListener('open', () => opens++);
  es.addEventListener('error', (event) => errors.push(`${event.code ?? ''} ${event.message ?? ''}`));
  const describeState = () =>
    JSON.stringify({ readyState: es.readyState, opens, errors, responses, received }, null, 1);
  return {
    es,
    received,
    responses,
    errors,
    opens: () => opens,
    describe: describeState,
    async opened(n = 1) {
      await waitFor(() => opens >= n, { what: `connection #${n} to open`, describe: describeState });
    },
    async count(n) {
      await waitFor(() => received.length >= n, { what: `${n} events`, describe: describeState });
    },
    close: () => es.close(),
  };
}

/** Holds the client's (re)connections while closed: `pass()` waits until `open()`. */
export class Gate {
  #waiters = [];
  #closed = false;
  waiting = 0;
  close() {
    this.#closed = true;
  }
  open() {
    this.#closed = false;
    for (const resolve of this.#waiters.splice(0)) resolve();
  }
  async pass() {
    if (!this.#closed) return;
    this.waiting++;
    await new Promise((resolve) => this.#waiters.push(resolve));
    this.waiting--;
  }
}


/** The subscriptions a test suite opens, closed together at its end. */
export function tracker() {
  const open = [];
  return {
    track(sub) {
      open.push(sub);
      return sub;
    },
    closeAll() {
      for (const sub of open.splice(0)) sub.close();
    },
  };
}
