// Builds a 3-node HyperDHT testnet whose only bootstrap is the given node, then has two
// Hyperswarm peers (also bootstrapping only from it) find each other on a topic and exchange
// one message. Prints JSON lines: {"event":"testnet",...}, {"event":"persistent",...},
// {"event":"exchanged",...}; exits 0 on success.
import createTestnet from 'hyperdht/testnet.js'
import Hyperswarm from 'hyperswarm'
import DHT from 'hyperdht'
import crypto from 'hypercore-crypto'

const [host, portText] = process.argv[2].split(':')
const bootstrap = [{ host, port: Number(portText) }]
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const testnet = await createTestnet(3, { bootstrap, host: '127.0.0.1' })
out({ event: 'testnet', nodes: testnet.nodes.map((n) => n.address()) })
out({ event: 'persistent', count: testnet.nodes.filter((n) => !n.ephemeral).length })

const a = new Hyperswarm({ dht: new DHT({ bootstrap, host: '127.0.0.1' }) })
const b = new Hyperswarm({ dht: new DHT({ bootstrap, host: '127.0.0.1' }) })
const topic = crypto.randomBytes(32)
const got = new Promise((resolve) => {
  b.on('connection', (conn) => conn.on('data', (d) => resolve(d.toString())))
})
a.on('connection', (conn) => { conn.write('hello through python'); conn.on('error', () => {}) })
b.on('connection', (conn) => conn.on('error', () => {}))
await a.join(topic, { server: true, client: false }).flushed()
b.join(topic, { server: false, client: true })
const text = await got
out({ event: 'exchanged', text })
await a.destroy()
await b.destroy()
await a.dht.destroy()
await b.dht.destroy()
await testnet.destroy()
