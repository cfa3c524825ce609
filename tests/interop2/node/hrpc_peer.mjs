// A stock @hyperswarm/rpc peer. argv: serve|call [--testnet N | --bootstrap host:port] [--cap HEX]
// serve: prints {"event":"ready","bootstrap":[...],"publicKey":HEX} and answers echo, fail
//        (throws, code E_BOOM), slow (waits value[0]*10 ms), note (event sink), notes,
//        send-event (emits event "hello" back to the caller).
// call:  prints {"event":"ready",...}; stdin commands {"op":"request","key":HEX,"method":M,"hex":H},
//        {"op":"event",...}, {"op":"concurrent","key":HEX,"calls":[[M,H],...]} -> "result" lines.
import RPC from '@hyperswarm/rpc'
import DHT from 'hyperdht'
import createTestnet from 'hyperdht/testnet.js'
import readline from 'readline'

const args = process.argv.slice(2)
const mode = args[0]
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (v) => (v === null || v === undefined ? null : Buffer.from(v).toString('hex'))
const capability = opt('--cap') ? Buffer.from(opt('--cap'), 'hex') : undefined

let testnet = null
let bootstrap
if (opt('--bootstrap')) {
  const [host, port] = opt('--bootstrap').split(':')
  bootstrap = [{ host, port: Number(port) }]
} else {
  testnet = await createTestnet(Number(opt('--testnet') || 3), { host: '127.0.0.1' })
  bootstrap = testnet.bootstrap
}
const rpc = new RPC({ dht: new DHT({ bootstrap, host: '127.0.0.1' }) })
await rpc.dht.fullyBootstrapped()

function errorRecord (err) {
  return { code: err.code || null, message: err.message, cause: err.cause ? { message: err.cause.message, code: err.cause.code || null } : null }
}

let server = null
if (mode === 'serve') {
  const notes = []
  server = rpc.createServer({ capability })
  server.respond('echo', (v) => v)
  server.respond('fail', () => { const e = new Error('boom'); e.code = 'E_BOOM'; throw e })
  server.respond('slow', async (v) => { await new Promise((r) => setTimeout(r, v[0] * 10)); return v })
  server.respond('note', (v) => { notes.push(v.toString()) })
  server.respond('notes', () => Buffer.from(notes.join(',')))
  server.respond('send-event', (v, client) => { client.event('hello', v); return null })
  await server.listen()
  out({ event: 'ready', bootstrap, publicKey: hex(server.publicKey) })
} else {
  out({ event: 'ready', bootstrap })
}

const clients = new Map()
function client (key) {
  if (!clients.has(key)) {
    const c = rpc.connect(Buffer.from(key, 'hex'), { capability })
    c.on('open', () => {
      c.rpc.respond('hello', (v) => { out({ event: 'got-event', hex: hex(v) }) })
      out({ event: 'open' })
    })
    c.on('close', () => out({ event: 'close' }))
    clients.set(key, c)
  }
  return clients.get(key)
}

const call = async (key, method, h, tag) => {
  const t0 = performance.now()
  try {
    const v = await client(key).request(method, h === null ? null : Buffer.from(h, 'hex'))
    out({ event: 'result', tag, hex: hex(v), ms: performance.now() - t0 })
  } catch (err) {
    out({ event: 'result', tag, error: errorRecord(err) })
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  const cmd = JSON.parse(line)
  if (cmd.op === 'request') await call(cmd.key, cmd.method, cmd.hex, cmd.tag ?? 0)
  else if (cmd.op === 'event') { client(cmd.key).event(cmd.method, Buffer.from(cmd.hex, 'hex')); out({ event: 'sent' }) }
  else if (cmd.op === 'concurrent') await Promise.all(cmd.calls.map(([m, h], i) => call(cmd.key, m, h, i)))
})
rl.on('close', async () => {
  await rpc.destroy()
  await rpc.dht.destroy()
  if (testnet) await testnet.destroy()
  process.exit(0)
})
