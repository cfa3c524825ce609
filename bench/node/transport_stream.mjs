// Node<->Node counterpart of bench/transport_stream.py: udx-native sockets on 127.0.0.1,
// @hyperswarm/secret-stream on top (keys from a Noise IK handshake as hyperdht does), then
// encrypted stream throughput and sequential small-message round trips. Prints one JSON line.
// Usage: node bench/node/transport_stream.mjs <megabytes> <message_bytes> <round_trips> <layout>
//   layout: same_process (both peers here) | two_processes (the receiver runs in a child)
import { createRequire } from 'module'
import { spawn } from 'child_process'
import { fileURLToPath } from 'url'
import readline from 'readline'
import UDX from 'udx-native'
import SecretStream from '@hyperswarm/secret-stream'
import crypto from 'hypercore-crypto'
import b4a from 'b4a'

const require = createRequire(import.meta.url)
const NoiseWrap = require('hyperdht/lib/noise-wrap.js')
const PING = b4a.from('ping-0123456789abcdef')
const DONE = b4a.from('done')
const hex = (b) => b4a.toString(b, 'hex')
const unhex = (h) => b4a.from(h, 'hex')

function handshake () {
  const payload = { version: 1, error: 0, firewall: 0, holepunch: null, addresses4: [], addresses6: [], udx: null, secretStream: {}, relayThrough: null, relayAddresses: null }
  const server = crypto.keyPair()
  const client = new NoiseWrap(crypto.keyPair(), server.publicKey)
  const responder = new NoiseWrap(server, null)
  responder.recv(client.send(payload))
  client.recv(responder.send(payload))
  return [client.final(), responder.final()]
}

const toJSON = (h) => ({ tx: hex(h.tx), rx: hex(h.rx), hash: hex(h.hash), publicKey: hex(h.publicKey), remotePublicKey: hex(h.remotePublicKey) })
const fromJSON = (h) => ({ tx: unhex(h.tx), rx: unhex(h.rx), hash: unhex(h.hash), publicKey: unhex(h.publicKey), remotePublicKey: unhex(h.remotePublicKey) })

function serve (s, total) {
  // receiver: count total bytes, confirm with DONE, then echo every message
  let received = 0
  s.on('data', (data) => {
    if (received < total) {
      received += data.byteLength
      if (received >= total) s.write(DONE)
    } else {
      s.write(data)
    }
  })
  s.on('end', () => s.end())
}

function nextMessage (s) {
  return new Promise((resolve) => s.once('data', resolve))
}

async function drive (s, total, messageBytes, roundTrips) {
  const msg = b4a.alloc(messageBytes, 7)
  const start = process.hrtime.bigint()
  const done = nextMessage(s)
  for (let sent = 0; sent < total; sent += msg.byteLength) {
    if (!s.write(msg)) await new Promise((resolve) => s.once('drain', resolve))
  }
  await done
  const throughput = total / (Number(process.hrtime.bigint() - start) / 1e9) / 1e6
  const samples = []
  for (let i = 0; i < roundTrips; i++) {
    const t = process.hrtime.bigint()
    const got = nextMessage(s)
    s.write(PING)
    await got
    samples.push(Number(process.hrtime.bigint() - t) / 1e3)
  }
  samples.sort((x, y) => x - y)
  return { throughput_MBps: throughput, rtt_median_us: samples[Math.floor(samples.length / 2)] }
}

async function sameProcess (total, messageBytes, roundTrips) {
  const udx = new UDX()
  const sa = udx.createSocket()
  const sb = udx.createSocket()
  sa.bind(0, '127.0.0.1')
  sb.bind(0, '127.0.0.1')
  const ra = udx.createStream(1)
  const rb = udx.createStream(2)
  ra.connect(sa, 2, sb.address().port, '127.0.0.1')
  rb.connect(sb, 1, sa.address().port, '127.0.0.1')
  const [hi, hr] = handshake()
  const a = new SecretStream(true, ra, { handshake: hi })
  const b = new SecretStream(false, rb, { handshake: hr })
  serve(b, total)
  const result = await drive(a, total, messageBytes, roundTrips)
  a.destroy()
  b.destroy()
  await sa.close()
  await sb.close()
  return result
}

function lines (stream) {
  const rl = readline.createInterface({ input: stream })
  const queue = []
  const waiters = []
  rl.on('line', (line) => {
    const v = JSON.parse(line)
    if (waiters.length) waiters.shift()(v)
    else queue.push(v)
  })
  return () => queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiters.push(resolve))
}

async function twoProcesses (total, messageBytes, roundTrips) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve'], { stdio: ['pipe', 'pipe', 'inherit'] })
  const next = lines(child.stdout)
  const peer = await next()
  const udx = new UDX()
  const socket = udx.createSocket()
  socket.bind(0, '127.0.0.1')
  const raw = udx.createStream(1)
  const [hi, hr] = handshake()
  child.stdin.write(JSON.stringify({ handshake: toJSON(hr), port: socket.address().port, id: 1, total }) + '\n')
  raw.connect(socket, peer.id, peer.port, '127.0.0.1')
  const s = new SecretStream(true, raw, { handshake: hi })
  const result = await drive(s, total, messageBytes, roundTrips)
  s.end()
  await next()
  s.destroy()
  child.stdin.end()
  await socket.close()
  return result
}

async function serveChild () {
  const next = lines(process.stdin)
  const udx = new UDX()
  const socket = udx.createSocket()
  socket.bind(0, '127.0.0.1')
  const raw = udx.createStream(2)
  process.stdout.write(JSON.stringify({ port: socket.address().port, id: 2 }) + '\n')
  const cfg = await next()
  raw.connect(socket, cfg.id, cfg.port, '127.0.0.1')
  const s = new SecretStream(false, raw, { handshake: fromJSON(cfg.handshake) })
  serve(s, cfg.total)
  s.on('close', async () => {
    process.stdout.write(JSON.stringify({ done: true }) + '\n')
    await socket.close()
    process.exit(0)
  })
}

if (process.argv[2] === 'serve') {
  await serveChild()
} else {
  const [megabytes, messageBytes, roundTrips] = process.argv.slice(2, 5).map(Number)
  const layout = process.argv[5] || 'same_process'
  const total = megabytes * 1024 * 1024
  const fn = layout === 'two_processes' ? twoProcesses : sameProcess
  const result = await fn(total, messageBytes, roundTrips)
  process.stdout.write(JSON.stringify({ impl: 'node', layout, megabytes, message_bytes: messageBytes, round_trips: roundTrips, ...result }) + '\n')
  process.exit(0)
}
