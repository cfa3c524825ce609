// A Node Hyperswarm peer whose DHT sockets bind 127.0.0.1, driven by JSON lines.
// argv: --bootstrap host:port
// Binding loopback matters: a peer bound to 0.0.0.0 advertises its other interfaces as LAN
// addresses, and where those are not routable its first connection attempt falls back to
// holepunch rounds and retries.
// First line {"event":"ready","publicKey":HEX,"address":{host,port}}.
// Commands: join {topic, server, client}, send {text}, status. EOF on stdin: destroy and exit.
// Events: joined, connection {remotePublicKey, initiator}, data {remotePublicKey, text},
// sent, status {connections}. Every connection is sent "hello from node" on open.
import Hyperswarm from 'hyperswarm'
import HyperDHT from 'hyperdht'
import readline from 'readline'

const args = process.argv.slice(2)
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')

const [host, port] = opt('--bootstrap').split(':')
const dht = new HyperDHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1' })
const swarm = new Hyperswarm({ dht })
swarm.on('connection', (conn) => {
  const remote = hex(conn.remotePublicKey)
  out({ event: 'connection', remotePublicKey: remote, initiator: conn.isInitiator })
  conn.on('data', (d) => out({ event: 'data', remotePublicKey: remote, text: d.toString() }))
  conn.on('error', () => {})
  conn.write('hello from node')
})
await dht.ready()
out({ event: 'ready', publicKey: hex(swarm.keyPair.publicKey), address: dht.localAddress() })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const cmd = JSON.parse(line)
  if (cmd.op === 'join') {
    const d = swarm.join(Buffer.from(cmd.topic, 'hex'), { server: cmd.server, client: cmd.client })
    await d.flushed()
    out({ event: 'joined' })
  } else if (cmd.op === 'send') {
    for (const c of swarm.connections) c.write(cmd.text)
    out({ event: 'sent' })
  } else if (cmd.op === 'status') {
    out({ event: 'status', connections: [...swarm.connections].map((c) => hex(c.remotePublicKey)) })
  }
})
rl.on('close', async () => {
  await swarm.destroy()
  await dht.destroy()
  process.exit(0)
})
