// protomux + protomux-rpc with @hyperswarm/rpc's channel naming and handshake, over TCP on
// 127.0.0.1 with uint24-LE framed messages (secret-stream's framing, no encryption).
// argv: server|client [port] --key HEX [--cap HEX] --hash HEX
// Server prints {"event":"listening","port":P}; client reads JSON commands on stdin:
//   {"op":"request","method":M,"hex":H} / {"op":"event",...} / {"op":"concurrent","calls":[[M,H],...]}
// and prints {"event":"result",...} lines.
import net from 'net'
import readline from 'readline'
import { Duplex } from 'streamx'
import ProtomuxRPC from 'protomux-rpc'
import Capability from 'hyperswarm-capability'
import { createRequire } from 'module'
const require = createRequire(import.meta.url)
const { getEncoding } = require('@hyperswarm/rpc/spec/hyperschema')
const Handshake = getEncoding('@rpc/handshake')

const args = process.argv.slice(2)
const mode = args[0]
const opt = (name) => { const i = args.indexOf(name); return i === -1 ? null : args[i + 1] }
const key = Buffer.from(opt('--key'), 'hex')
const cap = opt('--cap') ? Buffer.from(opt('--cap'), 'hex') : null
const hash = Buffer.from(opt('--hash'), 'hex')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (v) => (v === null || v === undefined ? null : Buffer.from(v).toString('hex'))
const capability = new Capability()

class Framed extends Duplex {
  constructor (sock, isInitiator) {
    super()
    this.userData = null
    this.sock = sock
    this.isInitiator = isInitiator
    this.handshakeHash = hash
    this.buf = Buffer.alloc(0)
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d])
      while (this.buf.length >= 3) {
        const n = this.buf.readUIntLE(0, 3)
        if (this.buf.length < 3 + n) break
        this.push(this.buf.subarray(3, 3 + n))
        this.buf = this.buf.subarray(3 + n)
      }
    })
    sock.on('end', () => this.push(null))
    sock.on('error', () => {})
    sock.on('close', () => this.destroy())
  }

  _write (data, cb) {
    const h = Buffer.alloc(3)
    h.writeUIntLE(data.length, 0, 3)
    this.sock.write(Buffer.concat([h, data]))
    cb(null)
  }

  _final (cb) { this.sock.end(); cb(null) }
  _destroy (cb) { this.sock.destroy(); cb(null) }
}

function makeRpc (stream) {
  const rpc = new ProtomuxRPC(stream, {
    id: key,
    handshakeEncoding: Handshake,
    handshake: cap ? { capability: capability.generate(stream, cap) } : null
  })
  rpc.on('open', (hs) => {
    if (cap && (!hs.capability || !capability.verify(stream, cap, hs.capability))) {
      out({ event: 'bad-capability' })
      rpc.destroy(new Error('Remote sent invalid capability'))
      return
    }
    out({ event: 'open' })
  })
  rpc.on('close', () => { out({ event: 'close' }); stream.destroy() })
  stream.on('error', () => {})
  return rpc
}

function errorRecord (err) {
  return { code: err.code || null, message: err.message, cause: err.cause ? { message: err.cause.message, code: err.cause.code || null } : null }
}

if (mode === 'server') {
  const notes = []
  const server = net.createServer((sock) => {
    const stream = new Framed(sock, false)
    const rpc = makeRpc(stream)
    rpc.respond('echo', (v) => v)
    rpc.respond('fail', () => { const e = new Error('boom'); e.code = 'E_BOOM'; throw e })
    rpc.respond('slow', async (v) => { await new Promise((r) => setTimeout(r, v[0] * 10)); return v })
    rpc.respond('note', (v) => { notes.push(v.toString()); })
    rpc.respond('notes', () => Buffer.from(notes.join(',')))
    rpc.respond('send-event', (v) => { rpc.event('hello', v); return null })
  })
  server.listen(0, '127.0.0.1', () => out({ event: 'listening', port: server.address().port }))
  process.stdin.resume()
  process.stdin.on('end', () => { server.close(); process.exit(0) })
} else {
  const sock = net.connect(Number(args[1]), '127.0.0.1')
  const stream = new Framed(sock, true)
  const rpc = makeRpc(stream)
  const events = []
  rpc.respond('hello', (v) => { events.push(hex(v)); out({ event: 'got-event', method: 'hello', hex: hex(v) }) })
  const call = async (method, h, tag) => {
    try {
      const v = await rpc.request(method, h === null ? null : Buffer.from(h, 'hex'))
      out({ event: 'result', tag, hex: hex(v) })
    } catch (err) {
      out({ event: 'result', tag, error: errorRecord(err) })
    }
  }
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', async (line) => {
    const cmd = JSON.parse(line)
    if (cmd.op === 'request') await call(cmd.method, cmd.hex, cmd.tag ?? 0)
    else if (cmd.op === 'event') { rpc.event(cmd.method, Buffer.from(cmd.hex, 'hex')); out({ event: 'sent' }) }
    else if (cmd.op === 'concurrent') await Promise.all(cmd.calls.map(([m, h], i) => call(m, h, i)))
    else if (cmd.op === 'end') { await rpc.end(); out({ event: 'ended' }) }
  })
  rl.on('close', () => { sock.destroy(); process.exit(0) })
}
