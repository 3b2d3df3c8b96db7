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
// With `--rate R`, each case then publishes R updates/s to every subscriber (each also
// subscribes to the topic `all`) for `--seconds`, and reads the server's CPU meanwhile: the
// CPU per delivery by transport (the fan-out writes to a plain socket and to a TLS subscriber
// whose records it seals; hyper writes HTTP/2 streams).
//
//   node bench/idle_transports.mjs [--sluice target/release/sluice] [--subscribers 2000]
//        [--server-args="--store sqlite:idle.db"]
//        [--streams 100] [--rate 10 --seconds 10] [--json out.json]

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
    rate: { type: 'string', default: '0' },
    seconds: { type: 'string', default: '10' },
  },
});
const RATE = Number(args.rate);
const SECRET = 'idle-bench';
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
    [...(wrap.length ? [...wrap.slice(1), path.resolve(args.sluice)] : []), 'serve', '--listen', '127.0.0.1:0', '--ready-file', ready, ...args['server-args'].split(' ').filter(Boolean), '--anonymous', '--jwt-secret', SECRET, ...(secure ? ['--tls-self-signed'] : [])],
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

const target = (i) => `/.well-known/mercure?topic=idle/${i}${RATE ? '&topic=all' : ''}`;
const request = (i) => `GET ${target(i)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`;

/** Bytes of updates the subscribers have received (counted in `--rate` runs). */
let received = 0;

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
        if (RATE) socket.on('data', (more) => (received += more.length));
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
    const stream = session.request({ ':path': target(i), accept: 'text/event-stream' });
    if (RATE) stream.on('data', (more) => (received += more.length));
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
    if (RATE) Object.assign(row, await publishing(server, secure));
    for (const h of held) (h.destroy ?? h.close).call(h);
    return row;
  } finally {
    await server.stop();
  }
}

/** The process's CPU time so far (user and system), in clock ticks (100 a second). */
async function cpuTicks(pid) {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Publishes `RATE` updates/s to the topic `all` for `--seconds`, one request each, and
 * measures the server's CPU meanwhile and what reached the subscribers. */
async function publishing(server, secure) {
  const token = await new Promise((resolve, reject) => {
    const child = spawn(path.resolve(args.sluice), ['token', '--secret', SECRET, '--publish', '*']);
    let out = '';
    child.stdout.on('data', (chunk) => (out += chunk));
    child.once('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`sluice token: ${code}`))));
  });
  const body = `topic=all&data=${'x'.repeat(100)}`;
  const publish = () =>
    new Promise((resolve, reject) => {
      const socket = secure
        ? tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
        : net.connect(server.port, '127.0.0.1');
      socket.once('error', reject);
      socket.setEncoding('latin1');
      let answer = '';
      socket.on('data', (chunk) => (answer += chunk));
      socket.once('end', () => (answer.startsWith('HTTP/1.1 200') ? resolve() : reject(new Error(answer.split('\r\n')[0]))));
      socket.write(
        `POST /.well-known/mercure HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n` +
          `Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
  await publish();
  await sleep(1000);
  received = 0;
  const updates = Math.round(RATE * Number(args.seconds));
  const [ticks, start] = [await cpuTicks(server.pid), performance.now()];
  for (let n = 0; n < updates; n += 1) {
    await publish();
    const due = start + ((n + 1) * 1000) / RATE;
    await sleep(Math.max(0, due - performance.now()));
  }
  await sleep(500);
  const seconds = (performance.now() - start) / 1000;
  const cpu = ((await cpuTicks(server.pid)) - ticks) / 100;
  const deliveries = updates * SUBSCRIBERS;
  const row = { rate: RATE, updates, bytes_received: received, cpu_percent: (cpu / seconds) * 100, cpu_us_per_delivery: (cpu * 1e6) / deliveries };
  process.stderr.write(`  ${RATE} updates/s: ${row.cpu_percent.toFixed(1)}% CPU, ${row.cpu_us_per_delivery.toFixed(2)} µs per delivery, ${received} bytes received\n`);
  return row;
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

const rated = RATE ? ` | CPU % at ${RATE} updates/s | µs per delivery |` : ' |';
console.log(`| transport | idle subscribers | KiB each${rated}`);
console.log(`| --- | ---: | ---:${RATE ? ' | ---: | ---: |' : ' |'}`);
for (const r of rows.filter(Boolean)) {
  const cpu = RATE ? ` | ${r.cpu_percent.toFixed(1)} | ${r.cpu_us_per_delivery.toFixed(2)} |` : ' |';
  console.log(`| ${r.transport} | ${r.subscribers.toLocaleString('en')} | ${r.kib_each.toFixed(1)}${cpu}`);
}
if (args.json) await writeFile(args.json, JSON.stringify({ rows }, null, 2));
