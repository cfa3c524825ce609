// A Node HyperDHT peer on a local testnet, driven by JSON lines on stdin.
// argv: [--testnet N] | [--bootstrap host:port]
// First line: {"event":"ready","bootstrap":[{host,port}],"publicKey":HEX}
// Commands: announce/unannounce/lookup {topic}, listen, connect {publicKey, send, firewall?},
// find {publicKey}. Connections echo what they receive back as "echo:<text>".
import createTestnet from 'hyperdht/testnet.js'
import DHT from 'hyperdht'
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
const dht = new DHT({ bootstrap, host: '127.0.0.1' })
await dht.fullyBootstrapped()
const keyPair = DHT.keyPair()
out({ event: 'ready', bootstrap, publicKey: hex(keyPair.publicKey) })

function wire (conn, who) {
  conn.on('error', (err) => out({ event: 'conn-error', who, message: err.message }))
  conn.on('data', (d) => {
    const text = d.toString()
    out({ event: 'data', who, text, remotePublicKey: hex(conn.remotePublicKey) })
    if (!text.startsWith('echo:')) conn.write('echo:' + text)
  })
  conn.on('close', () => out({ event: 'closed', who }))
}

let server = null
const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const cmd = JSON.parse(line)
  try {
    if (cmd.op === 'announce') {
      await dht.announce(Buffer.from(cmd.topic, 'hex'), keyPair).finished()
      out({ event: 'announced' })
    } else if (cmd.op === 'unannounce') {
      await dht.unannounce(Buffer.from(cmd.topic, 'hex'), keyPair)
      out({ event: 'unannounced' })
    } else if (cmd.op === 'lookup') {
      const peers = new Set()
      for await (const r of dht.lookup(Buffer.from(cmd.topic, 'hex'))) {
        for (const p of r.peers) peers.add(hex(p.publicKey))
      }
      out({ event: 'lookup', peers: [...peers] })
    } else if (cmd.op === 'find') {
      const nodes = []
      for await (const r of dht.findPeer(Buffer.from(cmd.publicKey, 'hex'))) nodes.push(r.from.port)
      out({ event: 'found', nodes })
    } else if (cmd.op === 'listen') {
      server = dht.createServer((conn) => {
        out({ event: 'connection', remotePublicKey: hex(conn.remotePublicKey) })
        wire(conn, 'server')
      })
      await server.listen(keyPair)
      out({ event: 'listening', publicKey: hex(keyPair.publicKey) })
    } else if (cmd.op === 'connect') {
      const t0 = performance.now()
      const conn = dht.connect(Buffer.from(cmd.publicKey, 'hex'))
      wire(conn, 'client')
      conn.on('open', () => {
        out({ event: 'open', ms: performance.now() - t0, remotePublicKey: hex(conn.remotePublicKey) })
        if (cmd.send) conn.write(cmd.send)
      })
    }
  } catch (err) {
    out({ event: 'error', op: cmd.op, message: err.message })
  }
})
rl.on('close', async () => {
  if (server) await server.close()
  await dht.destroy()
  if (testnet) await testnet.destroy()
  process.exit(0)
})
