// The Durable Streams reference server (npm @durable-streams/server, pinned in package.json),
// in the foreground on 127.0.0.1:$SLUICE_BENCH_PORT: in memory, or file-backed (LMDB for the
// metadata, an append-only log per stream, fdatasync on every append) with a data directory.
//
//   SLUICE_BENCH_PORT=4437 node bench/peers/durable/server.mjs            # in memory
//   SLUICE_BENCH_PORT=4437 node bench/peers/durable/server.mjs --data-dir /tmp/ds
//
// Streams live at any path (bench/durable.sh uses /v1/stream/..., as Sluice does). SIGTERM or
// SIGINT stops it cleanly (the file-backed store closes its LMDB environment).
import { DurableStreamTestServer } from '@durable-streams/server'

const port = Number(process.env.SLUICE_BENCH_PORT)
if (!Number.isInteger(port) || port <= 0) {
  console.error('set SLUICE_BENCH_PORT')
  process.exit(2)
}
const at = process.argv.indexOf('--data-dir')
const dataDir = at === -1 ? undefined : process.argv[at + 1]
const server = new DurableStreamTestServer({ port, host: '127.0.0.1', dataDir })
await server.start()
console.error(`durable streams reference server on ${server.url} (${dataDir ? `file-backed in ${dataDir}` : 'in memory'})`)

let stopping = false
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    if (stopping) return
    stopping = true
    await server.stop()
    process.exit(0)
  })
}
