// Emits hyperdht payload encodings from the pinned hyperdht package, one JSON line each:
// {"type": NAME, "value": {...}, "hex": HEX}. Buffers in values are hex strings.
const c = require('compact-encoding')
const m = require('hyperdht/lib/messages.js')

const b = (n, len) => Buffer.alloc(len, n)
const a = (host, port) => ({ host, port })
const jsonify = (v) => JSON.parse(JSON.stringify(v, (k, x) =>
  (x && x.type === 'Buffer' && Array.isArray(x.data)) ? Buffer.from(x.data).toString('hex') : x))

const cases = [
  ['handshake', { mode: 0, noise: b(1, 116), peerAddress: null, relayAddress: null }],
  ['handshake', { mode: 3, noise: b(2, 107), peerAddress: a('127.0.0.1', 50505), relayAddress: a('10.1.2.3', 49737) }],
  ['holepunch', { mode: 2, id: 300, payload: b(3, 50), peerAddress: a('1.2.3.4', 5) }],
  ['noisePayload', { version: 1, error: 0, firewall: 1, holepunch: null, addresses4: [a('127.0.0.1', 40000)], addresses6: [], udx: { reusableSocket: false, id: 4000000000, seq: 0 }, secretStream: {}, relayThrough: null, relayAddresses: null }],
  ['noisePayload', { version: 1, error: 0, firewall: 0, holepunch: { id: 0, relays: [{ relayAddress: a('127.0.0.1', 49738), peerAddress: a('127.0.0.1', 49932) }] }, addresses4: [a('127.0.0.1', 49740)], addresses6: [], udx: { reusableSocket: true, id: 7, seq: 0 }, secretStream: {}, relayThrough: { publicKey: b(9, 32), token: b(8, 32) }, relayAddresses: [a('127.0.0.1', 49738)] }],
  ['holepunchPayload', { error: 0, firewall: 2, round: 1, connected: false, punching: true, addresses: [a('9.9.9.9', 1000)], remoteAddress: a('8.8.8.8', 2000), token: b(5, 32), remoteToken: null }],
  ['peer', { publicKey: b(7, 32), relayAddresses: [a('127.0.0.1', 1), a('127.0.0.2', 2)] }],
  ['announce', { peer: { publicKey: b(7, 32), relayAddresses: [] }, refresh: null, signature: b(6, 64), bump: 0 }],
  ['announce', { peer: null, refresh: b(4, 32), signature: null, bump: 12345 }]
]
for (const [type, value] of cases) {
  process.stdout.write(JSON.stringify({ type, value: jsonify(value), hex: c.encode(m[type], value).toString('hex') }) + '\n')
}
const lr = { peers: [c.encode(m.peer, { publicKey: b(7, 32), relayAddresses: [a('127.0.0.1', 9)] })], bump: 0 }
process.stdout.write(JSON.stringify({ type: 'lookupRawReply', value: { peers: [{ publicKey: b(7, 32).toString('hex'), relayAddresses: [a('127.0.0.1', 9)] }], bump: 0 }, hex: c.encode(m.lookupRawReply, lr).toString('hex') }) + '\n')
