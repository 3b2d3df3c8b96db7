// Test helpers: run a real `sluice serve` on a port of its own, mint tokens with `sluice token`,
// publish with `curl`, `sluice publish` or fetch, and wait on conditions without sleeping
// for fixed times.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));

/** The binary under test: $SLUICE_BIN, else the workspace's debug build. */
export const SLUICE_BIN = path.resolve(here, process.env.SLUICE_BIN ?? '../../target/debug/sluice');

export const HUB_PATH = '/.well-known/mercure';

/** The environment for child processes: ours without SLUICE_* (a developer's settings must
 * not leak into the hub under test; every setting is passed as a flag). */
function childEnv() {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key.startsWith('SLUICE_')) delete env[key];
  }
  return env;
}

/** A port that was free a moment ago: bind port 0, read it, close. For servers that cannot
 * say which port they got from port 0 (`sluice serve` can: see `listenArgs`). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A fresh temporary directory, removed by the returned `remove()`. */
export async function tempDir(prefix) {
  const dir = await mkdtemp(path.join(os.tmpdir(), `sluice-${prefix}-`));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * The flags that make `sluice serve` listen on `port` (0: whichever the kernel gives it) and
 * write the address it bound to a ready file, and `boundPort()`, which resolves with that
 * port once the file is written (null before). With port 0 no port is picked beforehand and
 * then found taken by someone else before the server binds it.
 */
export async function listenArgs(port = 0) {
  const { dir, remove } = await tempDir('ready');
  const file = path.join(dir, 'address');
  return {
    args: ['--listen', `127.0.0.1:${port}`, '--ready-file', file],
    async boundPort() {
      const address = await readFile(file, 'utf8').catch(() => null);
      if (address === null) return null;
      await remove();
      return Number(address.trim().split(':').pop());
    },
  };
}

/**
 * Polls `check` (sync or async) until it returns a truthy value, which is returned. Throws
 * after `timeout` ms with `describe()` (the state observed) in the message.
 */
export async function waitFor(check, { timeout = 30_000, interval = 25, what = 'condition', describe } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      const state = describe ? `; observed: ${describe()}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${state}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * Starts `sluice serve` and waits until /healthz answers 200.
 *
 * options: port (default: the kernel's pick), store (`memory` or `sqlite:PATH`), secret,
 * anonymous (default true), corsOrigins (list), retry (ms), args (extra flags), env (extra
 * environment variables, e.g. the scripted provider's SLUICE_SCRIPTED_*), ca (the PEM file of
 * the certificate a hub given `--tls-cert` presents: its origin is then `https://`).
 * Returns { port, origin, hubUrl, log(), stop() }; stop({ grace }) sends SIGTERM and resolves
 * with the exit { code, signal }; after `grace` ms (10 s) it records the threads' backtraces
 * (gdb) in the log and sends SIGKILL.
 */
export async function startHub(options = {}) {
  const listen = await listenArgs(options.port);
  const args = ['serve', ...listen.args, '--store', options.store ?? 'memory'];
  if (options.secret) args.push('--jwt-secret', options.secret);
  args.push('--anonymous', String(options.anonymous ?? true));
  if (options.corsOrigins?.length) {
    for (const origin of options.corsOrigins) args.push('--cors-origins', origin);
  }
  if (options.retry !== undefined) args.push('--retry', String(options.retry));
  args.push(...(options.args ?? []));

  const env = { ...childEnv(), ...options.env };
  const child = spawn(SLUICE_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let output = '';
  const keep = (chunk) => {
    output += chunk;
    if (output.length > 64_000) output = output.slice(-64_000);
  };
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  let exitStatus = null;
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      running.delete(child);
      exitStatus = { code, signal };
      resolve(exitStatus);
    });
    // Not started at all (no such file, not executable): there will be no 'exit'.
    child.on('error', (err) => {
      running.delete(child);
      exitStatus = { code: null, signal: null, error: `${SLUICE_BIN}: ${err.message}` };
      resolve(exitStatus);
    });
  });

  let port = null;
  let origin = null;
  const healthy = waitFor(
    async () => {
      if (exitStatus) {
        throw new Error(`sluice serve exited early (${JSON.stringify(exitStatus)}):\n${output}`);
      }
      port ??= await listen.boundPort();
      if (port === null) return false;
      origin = `${options.ca ? 'https' : 'http'}://127.0.0.1:${port}`;
      try {
        if (options.ca) return (await httpsStatus(`${origin}/healthz`, options.ca)) === 200;
        const res = await fetch(`${origin}/healthz`);
        await res.arrayBuffer();
        return res.status === 200;
      } catch {
        return false;
      }
    },
    { timeout: 30_000, what: 'sluice serve to answer /healthz', describe: () => `port ${port}; ${output}` },
  );
  try {
    await healthy;
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  }

  return {
    port,
    origin,
    hubUrl: `${origin}${HUB_PATH}`,
    log: () => output,
    /** Kills it at once (SIGKILL): what it acknowledged is what must survive. */
    async kill() {
      if (exitStatus) return exitStatus;
      child.kill('SIGKILL');
      return exited;
    },
    async stop({ grace = 10_000, backtrace = true } = {}) {
      if (exitStatus) return exitStatus;
      child.kill('SIGTERM');
      let timer;
      const stopped = await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, grace)))]);
      clearTimeout(timer);
      if (stopped) return stopped;
      // Still running after SIGTERM: record where its threads are, then kill it.
      output += `\n--- still running ${grace} ms after SIGTERM\n`;
      if (backtrace) output += `thread backtraces:\n${await backtraces(child.pid)}`;
      child.kill('SIGKILL');
      return exited;
    },
  };
}

/** Every thread's backtrace of process `pid`, by gdb when it is installed. */
async function backtraces(pid) {
  try {
    const { stdout } = await execFileAsync(
      'gdb',
      ['-p', String(pid), '-batch', '-nx', '-ex', 'set pagination off', '-ex', 'thread apply all bt'],
      { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
    );
    return stdout;
  } catch (err) {
    return `(no backtrace: ${err.message.split('\n')[0]})`;
  }
}

/** The status of a GET of `url` over TLS, trusting the PEM certificate in file `ca` (Node's
 * fetch takes no certificate of its own). */
async function httpsStatus(url, ca) {
  const trusted = await readFile(ca);
  return new Promise((resolve, reject) => {
    https.get(url, { ca: trusted }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    }).on('error', reject);
  });
}

/** Runs the sluice binary with `args`; resolves with its trimmed stdout. */
export async function sluice(args) {
  try {
    const { stdout } = await execFileAsync(SLUICE_BIN, args, { env: childEnv() });
    return stdout.trim();
  } catch (err) {
    throw new Error(`sluice ${args.join(' ')} failed: ${err.message}\n${err.stderr ?? ''}`);
  }
}

/** A Mercure JWT from `sluice token`. */
export function mintToken({ secret, publish = [], subscribe = [] }) {
  const args = ['token', '--secret', secret];
  for (const s of publish) args.push('--publish', s);
  for (const s of subscribe) args.push('--subscribe', s);
  return sluice(args);
}

/** A draft-08 access token (`typ: at+jwt`) from `sluice token --access`, for the hub at
 * `audience` (its URL): exact topics in `publish`/`subscribe`, URL patterns in
 * `publishPatterns`/`subscribePatterns`. */
export function mintAccessToken({
  secret,
  audience,
  publish = [],
  subscribe = [],
  publishPatterns = [],
  subscribePatterns = [],
}) {
  const args = ['token', '--access', '--secret', secret, '--audience', audience];
  for (const s of publish) args.push('--publish', s);
  for (const s of subscribe) args.push('--subscribe', s);
  for (const s of publishPatterns) args.push('--publish-pattern', s);
  for (const s of subscribePatterns) args.push('--subscribe-pattern', s);
  return sluice(args);
}

/** Publishes with `sluice publish`; resolves with the id the hub assigned. */
export function publishWithCli(hubUrl, token, { topic, data, id, type, isPrivate }) {
  const args = ['publish', '--hub', hubUrl, '--token', token, '--data', data];
  for (const t of [topic].flat()) args.push('--topic', t);
  if (id !== undefined) args.push('--id', id);
  if (type !== undefined) args.push('--type', type);
  if (isPrivate) args.push('--private');
  return sluice(args);
}

/** Publishes with the real `curl` binary (a form POST); resolves with the response body,
 * the id of the update. Over TLS, `ca` is the PEM file of the certificate to trust. */
export async function publishWithCurl(hubUrl, token, { topic, data, id, type, isPrivate, ca }) {
  const args = ['--silent', '--show-error', '--fail-with-body', '-H', `Authorization: Bearer ${token}`];
  if (ca) args.push('--cacert', ca);
  for (const t of [topic].flat()) args.push('--data-urlencode', `topic=${t}`);
  args.push('--data-urlencode', `data=${data}`);
  if (id !== undefined) args.push('--data-urlencode', `id=${id}`);
  if (type !== undefined) args.push('--data-urlencode', `type=${type}`);
  if (isPrivate) args.push('--data-urlencode', 'private=on');
  args.push(hubUrl);
  try {
    const { stdout } = await execFileAsync('curl', args);
    return stdout;
  } catch (err) {
    throw new Error(`curl publish failed: ${err.message}\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
}

/** Publishes with fetch (a form POST); resolves with the id of the update. */
export async function publishWithFetch(hubUrl, token, { topic, data, id, type, isPrivate }) {
  const form = new URLSearchParams();
  for (const t of [topic].flat()) form.append('topic', t);
  form.append('data', data);
  if (id !== undefined) form.append('id', id);
  if (type !== undefined) form.append('type', type);
  if (isPrivate) form.append('private', 'on');
  const res = await fetch(hubUrl, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}` },
    body: form,
  });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${body}`);
  return body;
}

/** `count` Sluice nodes, each started by `start(redisUrl)`, on one throwaway `redis-server`;
 * `stop()` stops the nodes, then Redis. A node that fails to start stops what had started. */
export async function nodesOnOneRedis(count, start) {
  const redis = await startRedis();
  const nodes = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    await redis.stop();
  };
  try {
    for (let i = 0; i < count; i++) nodes.push(await start(redis.url));
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, stop };
}

/** A throwaway `redis-server` (no persistence) on a free port, for several Sluice nodes;
 * `stop()` kills it and removes its directory, as does this process's exit. */
export async function startRedis() {
  const port = await freePort();
  const { dir, remove } = await tempDir('redis');
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const reap = () => child.kill('SIGKILL');
  process.once('exit', reap);
  await waitFor(
    () =>
      new Promise((resolve) => {
        const socket = net.connect(port, '127.0.0.1');
        socket.once('connect', () => socket.write('PING\r\n'));
        socket.once('data', (d) => {
          socket.destroy();
          resolve(String(d).startsWith('+PONG'));
        });
        socket.once('error', () => resolve(false));
      }),
    { timeout: 30_000, what: 'redis-server to answer' },
  );
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGKILL');
      await exited;
      process.off('exit', reap);
      await remove();
    },
  };
}
