// A blind relay (npm blind-relay, Node's own relay for hyperdht's relayThrough) for the lab.
// argv: --bootstrap H:P   first line {"event":"listening","publicKey":HEX}
import DHT from 'hyperdht'
import { createRequire } from 'module'

const relay = createRequire(import.meta.url)('blind-relay')
const args = process.argv.slice(2)
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const [host, port] = opt('--bootstrap').split(':')
// a relay runs on a public host: it says so, so peers reach it without punching
const dht = new DHT({ bootstrap: [{ host, port: Number(port) }], firewalled: false })
await dht.fullyBootstrapped()
const keyPair = DHT.keyPair()
const relayServer = new relay.Server({
  createStream (opts) { return dht.createRawStream({ ...opts, framed: true }) }
})
const server = dht.createServer((socket) => {
  const log = (...a) => { if (process.env.HP_DEBUG) process.stderr.write(JSON.stringify(a) + '\n') }
  log('connection', socket.remotePublicKey.toString('hex').slice(0, 8))
  socket.on('error', (err) => log('socket-error', err.message))
  socket.on('close', () => log('socket-close'))
  const session = relayServer.accept(socket, { id: socket.remotePublicKey })
  session.on('error', (err) => log('session-error', err.message))
  session.on('open', () => log('session-open'))
  session.on('close', () => log('session-close'))
})
await server.listen(keyPair)
process.stdout.write(JSON.stringify({ event: 'listening', publicKey: keyPair.publicKey.toString('hex') }) + '\n')
process.on('SIGTERM', async () => { await dht.destroy(); process.exit(0) })
