// A stock @hyperswarm/rpc echo server. argv: host:port (bootstrap). Prints {"publicKey":HEX}.
import RPC from '@hyperswarm/rpc'
import DHT from 'hyperdht'

const [host, port] = process.argv[2].split(':')
// bind loopback: the testnet lives there, and other interfaces may not route
const rpc = new RPC({ dht: new DHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1' }) })
const server = rpc.createServer()
server.respond('echo', (v) => v)
await server.listen()
process.stdout.write(JSON.stringify({ publicKey: server.publicKey.toString('hex') }) + '\n')
process.stdin.resume()
process.stdin.on('end', async () => {
  await rpc.destroy()
  await rpc.dht.destroy()
  process.exit(0)
})
