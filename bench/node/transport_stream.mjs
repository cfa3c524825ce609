// Node<->Node counterpart of bench/transport_stream.py: two udx-native sockets on 127.0.0.1 in
// one process, @hyperswarm/secret-stream on top (keys from a Noise IK handshake as hyperdht does),
// then encrypted stream throughput and small-message round trips. Prints one JSON line.
// Usage: node bench/node/transport_stream.mjs <megabytes> <message_bytes> <round_trips>
import { createRequire } from 'module'
import UDX from 'udx-native'
import SecretStream from '@hyperswarm/secret-stream'
import crypto from 'hypercore-crypto'
import b4a from 'b4a'

const require = createRequire(import.meta.url)
const NoiseWrap = require('hyperdht/lib/noise-wrap.js')

const [megabytes = 64, messageBytes = 65536, roundTrips = 2000] = process.argv.slice(2).map(Number)

function handshake () {
  const server = crypto.keyPair()
  const client = new NoiseWrap(crypto.keyPair(), server.publicKey)
  const responder = new NoiseWrap(server, null)
  responder.recv(client.send({ version: 1, error: 0, firewall: 0, holepunch: null, addresses4: [], addresses6: [], udx: null, secretStream: {}, relayThrough: null, relayAddresses: null }))
  client.recv(responder.send({ version: 1, error: 0, firewall: 0, holepunch: null, addresses4: [], addresses6: [], udx: null, secretStream: {}, relayThrough: null, relayAddresses: null }))
  return [client.final(), responder.final()]
}

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

async function throughput () {
  const total = megabytes * 1024 * 1024
  const msg = b4a.alloc(messageBytes, 7)
  let received = 0
  const start = process.hrtime.bigint()
  const done = new Promise((resolve) => {
    const ondata = (data) => {
      received += data.byteLength
      if (received >= total) { b.off('data', ondata); resolve() }
    }
    b.on('data', ondata)
  })
  let sent = 0
  while (sent < total) {
    sent += msg.byteLength
    if (!a.write(msg)) await new Promise((resolve) => a.once('drain', resolve))
  }
  await done
  const secs = Number(process.hrtime.bigint() - start) / 1e9
  return total / secs / 1e6
}

async function roundTrip () {
  const ping = b4a.from('ping-0123456789abcdef')
  b.on('data', (data) => b.write(data))
  const samples = []
  for (let i = 0; i < roundTrips; i++) {
    const t = process.hrtime.bigint()
    const got = new Promise((resolve) => a.once('data', resolve))
    a.write(ping)
    await got
    samples.push(Number(process.hrtime.bigint() - t) / 1e3)
  }
  samples.sort((x, y) => x - y)
  return samples[Math.floor(samples.length / 2)]
}

const mbps = await throughput()
const rttUs = await roundTrip()
process.stdout.write(JSON.stringify({ impl: 'node', throughput_MBps: mbps, rtt_median_us: rttUs, megabytes, message_bytes: messageBytes, round_trips: roundTrips }) + '\n')
a.destroy()
b.destroy()
await sa.close()
await sb.close()
process.exit(0)
