// A udx-native peer driven over stdin/stdout (JSON lines), bound to 127.0.0.1.
//   <- {"event":"ready","port":n}
//   -> {"cmd":"stream","id":n,"remoteId":n,"port":n,"mode":"echo"|"sink"}
//        echo: writes back every byte and ends when the peer ends; sink: counts bytes only.
//        Every stream also echoes each MESSAGE back as a MESSAGE.
//   <- {"event":"opened","id":n}
//   -> {"cmd":"write","id":n,"data":hex} / {"cmd":"end","id":n} / {"cmd":"destroy","id":n}
//   -> {"cmd":"message","id":n,"data":hex} / {"cmd":"keepalive","id":n,"ms":n} (UDX HEARTBEATs)
//   <- {"event":"end","id":n,"bytes":n,"sha256":hex}   (remote END received)
//   <- {"event":"message","id":n,"data":hex}
//   <- {"event":"close","id":n,"error":code|null}
import readline from 'readline'
import { createHash } from 'crypto'
import UDX from 'udx-native'
import b4a from 'b4a'

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const udx = new UDX()
const socket = udx.createSocket()
socket.bind(0, '127.0.0.1')
const streams = new Map()

socket.on('message', (buf, rinfo) => out({ event: 'datagram', data: b4a.toString(buf, 'hex'), port: rinfo.port }))

function open (cmd) {
  const stream = udx.createStream(cmd.id)
  streams.set(cmd.id, stream)
  const hash = createHash('sha256')
  let bytes = 0
  stream.on('data', (data) => {
    bytes += data.byteLength
    hash.update(data)
    if (cmd.mode === 'echo') stream.write(data)
  })
  stream.on('end', () => {
    out({ event: 'end', id: cmd.id, bytes, sha256: hash.digest('hex') })
    if (cmd.mode === 'echo') stream.end()
  })
  stream.on('message', (data) => {
    out({ event: 'message', id: cmd.id, data: b4a.toString(data, 'hex') })
    stream.trySend(data)
  })
  let error = null
  stream.on('error', (err) => { error = err.code || err.message })
  stream.on('close', () => out({ event: 'close', id: cmd.id, error }))
  stream.connect(socket, cmd.remoteId, cmd.port, '127.0.0.1')
  out({ event: 'opened', id: cmd.id })
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  const s = streams.get(cmd.id)
  if (cmd.cmd === 'stream') open(cmd)
  else if (cmd.cmd === 'write') s.write(b4a.from(cmd.data, 'hex'))
  else if (cmd.cmd === 'end') s.end()
  else if (cmd.cmd === 'destroy') s.destroy()
  else if (cmd.cmd === 'keepalive') s.setKeepalive(cmd.ms)
  else if (cmd.cmd === 'message') s.trySend(b4a.from(cmd.data, 'hex'))
  else if (cmd.cmd === 'datagram') socket.trySend(b4a.from(cmd.data, 'hex'), cmd.port, '127.0.0.1')
})
rl.on('close', async () => {
  for (const s of streams.values()) s.destroy()
  await socket.close()
  process.exit(0)
})
out({ event: 'ready', port: socket.address().port })
