// A stock @hyperswarm/rpc client measuring connect time (lookup + handshake + channel open)
// and sequential echo round trips. argv: host:port KEY N SIZE
// Prints {"connect_ms":..., "rtt_ms":[...]}.
import RPC from '@hyperswarm/rpc'
import DHT from 'hyperdht'

const [bootstrap, key, n, size] = process.argv.slice(2)
const [host, port] = bootstrap.split(':')
// bind loopback: the testnet lives there, and other interfaces may not route
const rpc = new RPC({ dht: new DHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1' }) })
await rpc.dht.fullyBootstrapped()
const t0 = performance.now()
const client = rpc.connect(Buffer.from(key, 'hex'))
client._stream.on('error', (err) => process.stderr.write(`connect error: ${err.code || err.message}\n`))
await new Promise((resolve, reject) => {
  client.on('open', resolve)
  client.on('close', () => reject(new Error('connection closed before it opened')))
})
const connectMs = performance.now() - t0
const payload = Buffer.alloc(Number(size), 7)
const rtt = []
for (let i = 0; i < Number(n); i++) {
  const s = performance.now()
  await client.request('echo', payload)
  rtt.push(performance.now() - s)
}
process.stdout.write(JSON.stringify({ connect_ms: connectMs, rtt_ms: rtt }) + '\n')
client.destroy()
await rpc.destroy()
await rpc.dht.destroy()
process.exit(0)
