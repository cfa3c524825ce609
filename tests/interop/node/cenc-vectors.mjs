// Emits compact-encoding and crypto vectors from the pinned npm packages as one JSON document.
// Usage: node tests/interop/node/cenc-vectors.mjs > tests/transport/fixtures/cenc_vectors.json
import c from 'compact-encoding'
import net from 'compact-encoding-net'
import bitfield from 'compact-encoding-bitfield'
import crypto from 'hypercore-crypto'
import sodium from 'sodium-universal'
import b4a from 'b4a'

let seed = 0x2545f491
function rnd () { // xorshift32, deterministic across runs
  seed ^= seed << 13; seed >>>= 0
  seed ^= seed >>> 17
  seed ^= seed << 5; seed >>>= 0
  return seed
}
function rbytes (n) { const b = b4a.alloc(n); for (let i = 0; i < n; i++) b[i] = rnd() & 0xff; return b }
const hex = (b) => b4a.toString(b, 'hex')
const enc = (e, v) => hex(c.encode(e, v))

const out = { codecs: [], crypto: {} }
const push = (type, value, e) => out.codecs.push({ type, value, hex: enc(e, value) })

for (const n of [0, 1, 252, 253, 254, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1]) push('uint', n, c.uint)
for (let i = 0; i < 40; i++) {
  const bits = rnd() % 53
  const n = Math.floor((rnd() / 2 ** 32) * 2 ** bits)
  push('uint', n, c.uint)
}
for (const n of [0, 1, 255]) push('uint8', n, c.uint8)
for (const n of [0, 513, 65535]) push('uint16', n, c.uint16)
for (const n of [0, 0x123456, 0xffffff]) push('uint24', n, c.uint24)
for (const n of [0, 0x12345678, 0xffffffff]) push('uint32', n, c.uint32)
for (const n of [0, 2 ** 40 + 7, 2 ** 53 - 1]) push('uint64', n, c.uint64)
for (const b of [true, false]) push('bool', b, c.bool)
for (const n of [0, 1, 5, 100, 300, 1000]) {
  const b = rbytes(n)
  out.codecs.push({ type: 'buffer', value: hex(b), hex: enc(c.buffer, b) })
  out.codecs.push({ type: 'optionalBuffer', value: hex(b), hex: enc(c.optionalBuffer, n ? b : null) })
}
out.codecs.push({ type: 'optionalBuffer', value: null, hex: enc(c.optionalBuffer, null) })
for (const n of [32, 64]) out.codecs.push({ type: 'fixed' + n, value: hex(rbytes(n)) })
for (const v of out.codecs) if (v.type === 'fixed32' || v.type === 'fixed64') v.hex = v.value
for (const s of ['', 'protomux-rpc', 'héllo wörld', '日本語', '🦀'.repeat(70)]) push('string', s, c.string)
const addrs = [{ host: '127.0.0.1', port: 49737 }, { host: '10.0.0.255', port: 0 }, { host: '255.255.255.255', port: 65535 }]
for (const a of addrs) push('ipv4Address', a, net.ipv4Address)
push('ipv4AddressArray', addrs, c.array(net.ipv4Address))
push('uintArray', [1, 300, 70000, 2 ** 40], c.array(c.uint))
push('uintArray', [], c.array(c.uint))
for (const h of ['::1', 'fe80::1:2', '2001:db8:85a3::8a2e:370:7334', '1:2:3:4:5:6:7:8']) {
  const a = { host: h, port: 4242 }
  const bytes = c.encode(net.ipv6Address, a)
  out.codecs.push({ type: 'ipv6Address', value: { host: c.decode(net.ipv6Address, bytes).host, port: 4242, input: h }, hex: hex(bytes) })
}
for (const n of [0, 1, 5, 127]) push('bitfield7', n, bitfield(7))
for (const n of [0, 0x1234]) push('bitfield16', n, bitfield(16))

// crypto
const cr = out.crypto
cr.namespaces = {
  'hyperswarm/dht': { ids: [4, 5, 6, 0, 1, 10], values: crypto.namespace('hyperswarm/dht', [4, 5, 6, 0, 1, 10]).map(hex) },
  'hyperswarm/secret-stream': { ids: [0, 1, 2], values: crypto.namespace('hyperswarm/secret-stream', 3).map(hex) },
  'hyperswarm-capability': { ids: [0], values: crypto.namespace('hyperswarm-capability', 1).map(hex) }
}
cr.keyPairs = []
for (let i = 0; i < 4; i++) {
  const s = rbytes(32)
  const kp = crypto.keyPair(s)
  const msg = rbytes(i * 17)
  cr.keyPairs.push({ seed: hex(s), publicKey: hex(kp.publicKey), secretKey: hex(kp.secretKey), message: hex(msg), signature: hex(crypto.sign(msg, kp.secretKey)) })
}
cr.hashes = []
for (const n of [0, 3, 200]) {
  const d = rbytes(n)
  const key = rbytes(32)
  const keyed = b4a.alloc(32)
  sodium.crypto_generichash(keyed, d, key)
  const h64 = b4a.alloc(64)
  sodium.crypto_generichash(h64, d)
  cr.hashes.push({ data: hex(d), hash: hex(crypto.hash(d)), key: hex(key), keyed: hex(keyed), hash64: hex(h64) })
}
const dk = rbytes(32)
cr.discoveryKey = { key: hex(dk), value: hex(crypto.discoveryKey(dk)) }
process.stdout.write(JSON.stringify(out, null, 1) + '\n')
