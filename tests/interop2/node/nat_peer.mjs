// A Node HyperDHT peer for the network lab (tests/lab/test_holepunch.py, bench/nat_connect.py).
// argv: server --bootstrap H:P [--seed HEX32]
//         first line {"event":"listening","publicKey":HEX}; echoes every connection's data
//       client --bootstrap H:P --key HEX [--count N] [--timeout S] [--relay HEX]
//         connects N times one after the other (a new DHT each time, so no cached path);
//         one line per attempt: {"event":"open","ms":..,"echo":true} or {"event":"error",...}
import DHT from 'hyperdht'
import { createRequire } from 'module'

if (process.env.HP_DEBUG) {
  // log the punch decisions of both sides to stderr (lab debugging)
  const H = createRequire(import.meta.url)('hyperdht/lib/holepuncher.js')
  const log = (...a) => process.stderr.write(JSON.stringify(a) + '\n')
  const upd = H.prototype.updateRemote
  H.prototype.updateRemote = function (r) { log('updateRemote', this.isInitiator, r, this.nat.firewall, this.nat.addresses); return upd.call(this, r) }
  const pun = H.prototype._punch
  H.prototype._punch = async function () { const r = await pun.call(this); log('punch', this.isInitiator, r, this.nat.firewall, this.remoteFirewall, this.remoteAddresses); return r }
  const msg = H.prototype._onholepunchmessage
  H.prototype._onholepunchmessage = function (m, addr, ref) { log('probe-in', this.isInitiator, addr); return msg.call(this, m, addr, ref) }
  const des = H.prototype.destroy
  H.prototype.destroy = function () { log('destroy', this.isInitiator, this.connected, this.nat.firewall, this.nat.sampled); return des.call(this) }
}

const args = process.argv.slice(2)
const opt = (name, dflt = null) => { const i = args.indexOf(name); return i === -1 ? dflt : args[i + 1] }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')
const [host, port] = opt('--bootstrap').split(':')
const bootstrap = [{ host, port: Number(port) }]

if (args[0] === 'server') {
  const dht = new DHT({ bootstrap })
  await dht.fullyBootstrapped()
  const seed = opt('--seed')
  const keyPair = DHT.keyPair(seed ? Buffer.from(seed, 'hex') : undefined)
  const server = dht.createServer((conn) => {
    conn.on('error', () => {})
    conn.on('data', (d) => conn.write(d))
  })
  await server.listen(keyPair)
  out({ event: 'listening', publicKey: hex(keyPair.publicKey), firewalled: dht.firewalled })
  process.on('SIGTERM', async () => { await dht.destroy(); process.exit(0) })
} else {
  const count = Number(opt('--count', '1'))
  const timeout = Number(opt('--timeout', '30')) * 1000
  const key = Buffer.from(opt('--key'), 'hex')
  for (let i = 0; i < count; i++) {
    const dht = new DHT({ bootstrap })
    await dht.fullyBootstrapped()
    const t0 = performance.now()
    const result = await new Promise((resolve) => {
      const relay = opt('--relay')
      const conn = dht.connect(key, relay ? { relayThrough: Buffer.from(relay, 'hex') } : {})
      const timer = setTimeout(() => { conn.destroy(); resolve({ event: 'error', code: 'TIMEOUT', message: 'no echo in time' }) }, timeout)
      conn.on('error', (err) => { clearTimeout(timer); resolve({ event: 'error', code: err.code || null, message: err.message }) })
      conn.on('open', () => conn.write('hi'))
      conn.on('data', (d) => {
        clearTimeout(timer)
        resolve({ event: 'open', ms: performance.now() - t0, echo: d.toString() === 'hi', punches: dht.stats.punches, relaying: dht.stats.relaying })
        conn.destroy()
      })
    })
    out(result)
    await dht.destroy()
  }
  process.exit(0)
}
