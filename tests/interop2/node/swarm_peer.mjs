// A Node Hyperswarm peer driven by JSON lines. argv: [--testnet N | --bootstrap host:port]
// First line {"event":"ready","bootstrap":[...],"publicKey":HEX}.
// Commands: join {topic, server, client}, flush, leave {topic}, lookup {topic}, status,
// send {text}.
// Events: connection {remotePublicKey, initiator}, data {remotePublicKey, text}, closed.
// Every connection is sent "hello from node" on open.
import Hyperswarm from 'hyperswarm'
import DHT from 'hyperdht'
import createTestnet from 'hyperdht/testnet.js'
import readline from 'readline'

const args = process.argv.slice(2)
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')

let testnet = null
let bootstrap
if (opt('--bootstrap')) {
  const [host, port] = opt('--bootstrap').split(':')
  bootstrap = [{ host, port: Number(port) }]
} else {
  testnet = await createTestnet(Number(opt('--testnet') || 3), { host: '127.0.0.1' })
  bootstrap = testnet.bootstrap
}
const swarm = new Hyperswarm({ dht: new DHT({ bootstrap, host: '127.0.0.1' }) })
let opened = 0
swarm.on('connection', (conn, info) => {
  opened++
  const remote = hex(conn.remotePublicKey)
  out({ event: 'connection', remotePublicKey: remote, initiator: conn.isInitiator })
  conn.on('data', (d) => out({ event: 'data', remotePublicKey: remote, text: d.toString() }))
  conn.on('error', () => {})
  conn.on('close', () => out({ event: 'closed', remotePublicKey: remote }))
  conn.write('hello from node')
})
out({ event: 'ready', bootstrap, publicKey: hex(swarm.keyPair.publicKey) })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const cmd = JSON.parse(line)
  if (cmd.op === 'join') {
    const d = swarm.join(Buffer.from(cmd.topic, 'hex'), { server: cmd.server, client: cmd.client })
    await d.flushed()
    out({ event: 'joined' })
  } else if (cmd.op === 'flush') {
    await swarm.flush()
    out({ event: 'flushed' })
  } else if (cmd.op === 'leave') {
    await swarm.leave(Buffer.from(cmd.topic, 'hex'))
    out({ event: 'left' })
  } else if (cmd.op === 'lookup') {
    const peers = new Set()
    for await (const r of swarm.dht.lookup(Buffer.from(cmd.topic, 'hex'))) {
      for (const p of r.peers) peers.add(hex(p.publicKey))
    }
    out({ event: 'lookup', peers: [...peers] })
  } else if (cmd.op === 'status') {
    out({ event: 'status', connections: [...swarm.connections].map((c) => hex(c.remotePublicKey)), opened })
  } else if (cmd.op === 'send') {
    for (const c of swarm.connections) c.write(cmd.text)
    out({ event: 'sent' })
  }
})
rl.on('close', async () => {
  await swarm.destroy()
  await swarm.dht.destroy()
  if (testnet) await testnet.destroy()
  process.exit(0)
})
