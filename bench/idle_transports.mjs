// Memory per idle subscriber by transport: HTTP/1.1 in the clear (the socket-level path),
// HTTP/1.1 over TLS, and HTTP/2 over TLS with one stream per connection and with many
// streams sharing a connection, as a browser multiplexes its EventSources.
//
// Each case starts a fresh `sluice serve --tls-self-signed --store memory` (or without TLS;
// `--server-args` replaces `--store memory`),
// reads its RSS, opens the subscribers (each a GET of /.well-known/mercure?topic=idle/N with
// `Accept: text/event-stream`, waiting for its 200), lets them sit, and reads the RSS again:
// the difference over the subscribers is what one costs. Node's own built-in clients, so
// nothing to install.
//
//   node bench/idle_transports.mjs [--sluice target/release/sluice] [--subscribers 2000]
//        [--server-args="--store sqlite:idle.db"]
//        [--streams 100] [--json out.json]

import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    sluice: { type: 'string', default: 'target/release/sluice' },
    subscribers: { type: 'string', default: '2000' },
    streams: { type: 'string', default: '100' },
    settle: { type: 'string', default: '3000' },
    json: { type: 'string' },
    // Only the cases whose names match this regular expression (e.g. "100 streams", "^HTTP/1.1$").
    only: { type: 'string', default: '' },
    // A command to run the server under, e.g. "heaptrack -o /tmp/idle".
    wrap: { type: 'string', default: '' },
    // More arguments for `sluice serve`, e.g. "--store sqlite:idle.db" (relative paths are
    // in the server's own temporary directory).
    'server-args': { type: 'string', default: '--store memory' },
  },
});
const SUBSCRIBERS = Number(args.subscribers);
const STREAMS = Number(args.streams);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `sluice serve` on a port the kernel picks; resolves with its pid, port and stop(). */
async function serve({ tls: secure }) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'sluice-idle-'));
  const ready = path.join(dir, 'address');
  const wrap = args.wrap.split(' ').filter(Boolean);
  const child = spawn(
    wrap[0] ?? path.resolve(args.sluice),
    [...(wrap.length ? [...wrap.slice(1), path.resolve(args.sluice)] : []), 'serve', '--listen', '127.0.0.1:0', '--ready-file', ready, ...args['server-args'].split(' ').filter(Boolean), '--anonymous', '--jwt-secret', 'idle-bench', ...(secure ? ['--tls-self-signed'] : [])],
    { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } },
  );
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sluice serve exited with ${child.exitCode}`);
    const address = await readFile(ready, 'utf8').catch(() => '');
    if (address.trim()) {
      const port = Number(address.trim().split(':').pop());
      const pid = wrap.length ? await serverPid(child.pid) : child.pid;
      return {
        pid,
        port,
        async stop() {
          // A wrapper (a profiler) gets to finish its output: the server stops cleanly.
          process.kill(pid, wrap.length ? 'SIGTERM' : 'SIGKILL');
          await new Promise((r) => child.once('exit', r));
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    await sleep(20);
  }
}

/** The pid of the `sluice` process that `parent` (a wrapper) started. */
async function serverPid(parent) {
  for (;;) {
    const children = await readFile(`/proc/${parent}/task/${parent}/children`, 'utf8').catch(() => '');
    for (const pid of children.split(' ').filter(Boolean)) {
      const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
      if (comm.trim() === 'sluice') return Number(pid);
      const deeper = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
      if (deeper.trim()) return serverPid(Number(pid));
    }
    await sleep(20);
  }
}

/** The process's resident memory, KiB. */
async function rssKib(pid) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

const request = (i) => `GET /.well-known/mercure?topic=idle/${i} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`;

/** An HTTP/1.1 subscriber on `socket` (once connected): resolves at its response's 200. */
function h1(socket, i) {
  return new Promise((resolve, reject) => {
    let head = '';
    socket.setEncoding('latin1');
    socket.once('error', reject);
    socket.on('data', function onData(chunk) {
      head += chunk;
      if (head.includes('\r\n')) {
        socket.off('data', onData);
        if (!head.startsWith('HTTP/1.1 200')) reject(new Error(`subscriber ${i}: ${head.split('\r\n')[0]}`));
        else resolve(socket);
      }
    });
    socket.write(request(i));
  });
}

const open = {
  async 'HTTP/1.1'(port, i) {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((r, e) => socket.once('connect', r).once('error', e));
    return h1(socket, i);
  },
  async 'HTTP/1.1 over TLS'(port, i) {
    const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    await new Promise((r, e) => socket.once('secureConnect', r).once('error', e));
    return h1(socket, i);
  },
};

/** `count` HTTP/2 streams on one new connection over TLS: resolves once each has its 200. */
async function h2Streams(port, first, count) {
  const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
  await new Promise((r, e) => session.once('connect', r).once('error', e));
  const streams = [];
  for (let i = first; i < first + count; i += 1) {
    const stream = session.request({ ':path': `/.well-known/mercure?topic=idle/${i}`, accept: 'text/event-stream' });
    streams.push(
      new Promise((resolve, reject) => {
        stream.once('response', (headers) => (headers[':status'] === 200 ? resolve() : reject(new Error(`stream ${i}: ${headers[':status']}`))));
        stream.once('error', reject);
      }),
    );
  }
  await Promise.all(streams);
  return session;
}

/** One case: a fresh server, `subscribers` of them opened by `connect`, the RSS before and after. */
async function measure(name, secure, connect) {
  if (!new RegExp(args.only).test(name)) return null;
  const server = await serve({ tls: secure });
  try {
    await sleep(500);
    const before = await rssKib(server.pid);
    const held = await connect(server.port);
    await sleep(Number(args.settle));
    const after = await rssKib(server.pid);
    const row = { transport: name, subscribers: SUBSCRIBERS, rss_before_kib: before, rss_idle_kib: after, kib_each: (after - before) / SUBSCRIBERS };
    process.stderr.write(`${name}: ${row.kib_each.toFixed(1)} KiB per idle subscriber (${before} -> ${after} KiB)\n`);
    for (const h of held) (h.destroy ?? h.close).call(h);
    return row;
  } finally {
    await server.stop();
  }
}

/** Opens `SUBSCRIBERS` with `one(port, i)`, 100 at a time, showing progress. */
function inBatches(one) {
  return async (port) => {
    const held = [];
    for (let i = 0; i < SUBSCRIBERS; i += 100) {
      const batch = [];
      for (let j = i; j < Math.min(i + 100, SUBSCRIBERS); j += 1) batch.push(one(port, j));
      held.push(...(await Promise.all(batch)));
      process.stderr.write(`\r  ${held.length} / ${SUBSCRIBERS} connected`);
    }
    process.stderr.write('\n');
    return held;
  };
}

const rows = [];
rows.push(await measure('HTTP/1.1', false, inBatches(open['HTTP/1.1'])));
rows.push(await measure('HTTP/1.1 over TLS', true, inBatches(open['HTTP/1.1 over TLS'])));
rows.push(await measure('HTTP/2 over TLS, 1 stream a connection', true, inBatches((port, i) => h2Streams(port, i, 1))));
rows.push(
  await measure(`HTTP/2 over TLS, ${STREAMS} streams a connection`, true, async (port) => {
    const held = [];
    for (let i = 0; i < SUBSCRIBERS; i += STREAMS) {
      held.push(await h2Streams(port, i, Math.min(STREAMS, SUBSCRIBERS - i)));
      process.stderr.write(`\r  ${Math.min(i + STREAMS, SUBSCRIBERS)} / ${SUBSCRIBERS} connected`);
    }
    process.stderr.write('\n');
    return held;
  }),
);

console.log('| transport | idle subscribers | KiB each |');
console.log('| --- | ---: | ---: |');
for (const r of rows.filter(Boolean)) console.log(`| ${r.transport} | ${r.subscribers.toLocaleString('en')} | ${r.kib_each.toFixed(1)} |`);
if (args.json) await writeFile(args.json, JSON.stringify({ rows }, null, 2));
