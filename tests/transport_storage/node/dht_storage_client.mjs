// A Node HyperDHT client that exercises a testnet's storage commands and prints one JSON line
// per step. argv: --bootstrap host:port --seed HEX64
// Steps: routing table after a FIND_NODE walk, immutable put/get, mutable put (seq 1) / get / stale put (seq 0), announce, lookup,
// unannounce, lookup. Binds 127.0.0.1. Exits when done.
import HyperDHT from 'hyperdht'

const args = process.argv.slice(2)
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => (b ? Buffer.from(b).toString('hex') : null)

const [host, port] = opt('--bootstrap').split(':')
const dht = new HyperDHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1' })
await dht.ready()
const keyPair = HyperDHT.keyPair(Buffer.from(opt('--seed'), 'hex'))

await dht.findNode(dht.table.id).finished()
out({ step: 'table', nodes: dht.toArray() })

const put = await dht.immutablePut(Buffer.from('an immutable tether value'))
const got = await dht.immutableGet(put.hash)
out({ step: 'immutable', hash: hex(put.hash), value: got && got.value.toString(), nodes: put.closestNodes.length })

await dht.mutablePut(keyPair, Buffer.from('mutable v1'), { seq: 1 })
const m = await dht.mutableGet(keyPair.publicKey)
out({ step: 'mutable', seq: m && m.seq, value: m && m.value.toString() })
let stale = null
try {
  await dht.mutablePut(keyPair, Buffer.from('mutable v0'), { seq: 0 })
  stale = 'accepted'
} catch (err) {
  stale = err.code || err.message
}
out({ step: 'stale-mutable', result: stale })

const topic = HyperDHT.hash(Buffer.from('tether/presence/local'))
await dht.announce(topic, keyPair, [{ host: '127.0.0.1', port: 1234 }]).finished()
const peers = []
for await (const reply of dht.lookup(topic)) for (const p of reply.peers) peers.push({ publicKey: hex(p.publicKey), relayAddresses: p.relayAddresses })
out({ step: 'lookup', peers })
await dht.unannounce(topic, keyPair)
const after = []
for await (const reply of dht.lookup(topic)) for (const p of reply.peers) after.push(hex(p.publicKey))
out({ step: 'lookup-after-unannounce', peers: after })
await dht.destroy()
