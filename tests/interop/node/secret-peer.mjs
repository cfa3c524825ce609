// @hyperswarm/secret-stream over udx-native, driven over stdin/stdout (JSON lines).
//   <- {"event":"ready","port":n}
//   -> {"cmd":"stream","id":n,"remoteId":n,"port":n,"isInitiator":bool,"keepAlive":ms,
//       "handshake":{tx,rx,hash,publicKey,remotePublicKey}|null,"seed":hex}
//        Each received message is echoed back as one message; each datagram (send) likewise.
//        Without "handshake" the stream runs the in-band XX handshake with the seed's key pair.
//   <- {"event":"opened","id":n}   then   {"event":"connect","id":n,"remotePublicKey":hex}
//   -> {"cmd":"write","id":n,"size":n,"seed":n}  writes one message of size random bytes
//   <- {"event":"wrote","id":n,"sha256":hex}
//   -> {"cmd":"send","id":n,"data":hex}          sends one unordered datagram
//   -> {"cmd":"end","id":n} / {"cmd":"destroy","id":n}
//   <- {"event":"datagram","id":n,"data":hex}
//   <- {"event":"end","id":n,"messages":n,"empty":n,"bytes":n}
//   <- {"event":"close","id":n,"error":msg|null}
import readline from 'readline'
import { createHash, randomBytes } from 'crypto'
import UDX from 'udx-native'
import SecretStream from '@hyperswarm/secret-stream'
import crypto from 'hypercore-crypto'
import b4a from 'b4a'

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hexbuf = (h) => b4a.from(h, 'hex')
const udx = new UDX()
const socket = udx.createSocket()
socket.bind(0, '127.0.0.1')
const streams = new Map()

function open (cmd) {
  const raw = udx.createStream(cmd.id)
  raw.connect(socket, cmd.remoteId, cmd.port, '127.0.0.1')
  const opts = { keepAlive: cmd.keepAlive || 0 }
  if (cmd.handshake) {
    const h = cmd.handshake
    opts.handshake = { tx: hexbuf(h.tx), rx: hexbuf(h.rx), hash: hexbuf(h.hash), publicKey: hexbuf(h.publicKey), remotePublicKey: hexbuf(h.remotePublicKey) }
  } else {
    opts.keyPair = crypto.keyPair(hexbuf(cmd.seed))
  }
  const s = new SecretStream(cmd.isInitiator, raw, opts)
  streams.set(cmd.id, s)
  let messages = 0
  let empty = 0
  let bytes = 0
  let error = null
  s.on('connect', () => out({ event: 'connect', id: cmd.id, remotePublicKey: b4a.toString(s.remotePublicKey, 'hex') }))
  s.on('data', (data) => {
    messages++
    bytes += data.byteLength
    if (data.byteLength === 0) empty++
    s.write(data)
  })
  s.on('message', (data) => {
    out({ event: 'datagram', id: cmd.id, data: b4a.toString(data, 'hex') })
    s.trySend(data)
  })
  s.on('end', () => {
    out({ event: 'end', id: cmd.id, messages, empty, bytes })
    s.end()
  })
  s.on('error', (err) => { error = err.code || err.message })
  s.on('close', () => out({ event: 'close', id: cmd.id, error }))
  out({ event: 'opened', id: cmd.id })
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  const s = streams.get(cmd.id)
  if (cmd.cmd === 'stream') open(cmd)
  else if (cmd.cmd === 'write') {
    const data = randomBytes(cmd.size)
    s.write(data)
    out({ event: 'wrote', id: cmd.id, sha256: createHash('sha256').update(data).digest('hex') })
  } else if (cmd.cmd === 'send') s.trySend(hexbuf(cmd.data))
  else if (cmd.cmd === 'end') s.end()
  else if (cmd.cmd === 'destroy') s.destroy()
})
rl.on('close', async () => {
  for (const s of streams.values()) s.destroy()
  await socket.close()
  process.exit(0)
})
out({ event: 'ready', port: socket.address().port })
