// Memory per idle kept-alive connection after an answer: a fresh `sluice serve --provider
// scripted`, N raw HTTP/1.1 connections that each ask one streamed Chat Completions answer,
// read it to its last chunk and then stay open with nothing more to ask (as an SDK's pooled
// connection does between requests); the server's RSS before and after, per connection.
//
//   node bench/idle_keepalive.mjs [BINARY] [N]     # defaults: target/release/sluice 2000
import net from 'node:net';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
const [bin, n] = [process.argv[2] || 'target/release/sluice', Number(process.argv[3] || 2000)];
const dir = fs.mkdtempSync('/tmp/ka-'); const ready = `${dir}/addr`;
const server = spawn(bin, ['serve', '--store', 'memory', '--provider', 'scripted', '--anonymous', '--listen', '127.0.0.1:0', '--ready-file', ready], { env: { ...process.env, SLUICE_SCRIPTED_TTFT_MS: '0', SLUICE_SCRIPTED_TOKENS_PER_SECOND: '100000' }, stdio: 'ignore' });
while (!fs.existsSync(ready) || !fs.readFileSync(ready, 'utf8').trim()) await new Promise(r => setTimeout(r, 50));
const [host, port] = fs.readFileSync(ready, 'utf8').trim().replace('http://', '').split(':');
const rss = () => Number(fs.readFileSync(`/proc/${server.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
const body = JSON.stringify({ model: 'scripted', stream: true, messages: [{ role: 'user', content: 'hi' }] });
const request = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
const one = () => new Promise((resolve, reject) => {
  const s = net.connect(Number(port), host, () => s.write(request));
  let got = '';
  s.on('data', d => { got += d; if (got.endsWith('0\r\n\r\n')) resolve(s); });
  s.on('error', reject);
});
// warm up
(await one()).destroy();
await new Promise(r => setTimeout(r, 300));
const before = rss();
const sockets = [];
for (let i = 0; i < n; i += 50) {
  sockets.push(...await Promise.all(Array.from({ length: Math.min(50, n - i) }, one)));
  process.stderr.write(`\r${sockets.length} of ${n} connections answered and idle`);
}
process.stderr.write('\n');
await new Promise(r => setTimeout(r, 1000));
const after = rss();
console.log(`${bin}: ${n} idle kept-alive connections after an answer: ${((after - before) / n).toFixed(1)} KiB each`);
sockets.forEach(s => s.destroy()); server.kill();
