// Emits dht-rpc message encodings produced by the pinned dht-rpc package, one JSON line each.
// Request/reply bytes come from dht-rpc's own encoder (lib/io.js Request) driven by a stub IO.
const IO = require('dht-rpc/lib/io.js')
const peer = require('dht-rpc/lib/peer.js')

const hex = (b) => (b ? Buffer.from(b).toString('hex') : null)
const fill = (n) => Buffer.alloc(32, n)

function makeIo ({ ephemeral, closest }) {
  const socket = { sent: null, trySend (buf) { this.sent = Buffer.from(buf) } }
  const io = {
    ephemeral,
    serverSocket: socket,
    table: { id: fill(0xaa), closest: () => closest },
    token: () => fill(0x77)
  }
  return { io, socket }
}

// IO.js exports the IO class only; reach Request through a created request.
function encodeRequest (opts) {
  const { io, socket } = makeIo(opts)
  const Req = requestClass()
  const req = new Req(io, socket, opts.tid, null, opts.to, opts.token, opts.internal,
    opts.command, opts.target, opts.value, null, 0)
  return req._encodeRequest(opts.token, opts.value, opts.to, socket)
}

function encodeReply (opts) {
  const { io, socket } = makeIo(opts)
  const Req = requestClass()
  const req = new Req(io, socket, opts.tid, opts.from, opts.to, null, false, 0, opts.target,
    null, null, 0)
  req._sendReply(opts.error, opts.value, opts.token, opts.closer, opts.from, socket)
  return socket.sent
}

let cached = null
function requestClass () {
  if (cached) return cached
  const fakeIo = Object.create(IO.prototype)
  fakeIo._destroying = null
  fakeIo._tid = 0
  fakeIo.firewalled = true
  fakeIo.clientSocket = null
  fakeIo.inflight = []
  fakeIo.stats = { commands: [], requests: { active: 0, total: 0 } }
  const r = IO.prototype.createRequest.call(fakeIo, { host: '1.2.3.4', port: 1 }, null, false, 0, null, null, null, 0)
  cached = r.constructor
  return cached
}

const out = []
const to = { host: '127.0.0.1', port: 49737 }
out.push({ kind: 'request', name: 'ping', tid: 5, to, internal: true, command: 0, token: null, target: null, value: null, ephemeral: true,
  hex: hex(encodeRequest({ ephemeral: true, closest: [], tid: 5, to, internal: true, command: 0, token: null, target: null, value: null })) })
out.push({ kind: 'request', name: 'find_node_persistent', tid: 65535, to, internal: true, command: 2, token: null, target: hex(fill(1)), value: null, ephemeral: false, id: hex(fill(0xaa)),
  hex: hex(encodeRequest({ ephemeral: false, closest: [], tid: 65535, to, internal: true, command: 2, token: null, target: fill(1), value: null })) })
out.push({ kind: 'request', name: 'announce_user', tid: 300, to: { host: '10.0.0.2', port: 1 }, internal: false, command: 4, token: hex(fill(9)), target: hex(fill(2)), value: hex(Buffer.alloc(300, 3)), ephemeral: true,
  hex: hex(encodeRequest({ ephemeral: true, closest: [], tid: 300, to: { host: '10.0.0.2', port: 1 }, internal: false, command: 4, token: fill(9), target: fill(2), value: Buffer.alloc(300, 3) })) })
out.push({ kind: 'request', name: 'empty_value', tid: 7, to, internal: false, command: 300, token: null, target: null, value: '', ephemeral: true,
  hex: hex(encodeRequest({ ephemeral: true, closest: [], tid: 7, to, internal: false, command: 300, token: null, target: null, value: Buffer.alloc(0) })) })
const closer = [{ host: '127.0.0.1', port: 49738 }, { host: '192.168.1.20', port: 65535 }]
const from = { host: '127.0.0.1', port: 50000 }
out.push({ kind: 'response', name: 'reply_full', tid: 9, to: from, id: hex(fill(0xaa)), token: hex(fill(0x77)), closer, error: 0, value: hex(Buffer.from('hello')),
  hex: hex(encodeReply({ ephemeral: false, closest: closer, tid: 9, from, to: from, target: fill(4), error: 0, value: Buffer.from('hello'), token: true, closer: true })) })
out.push({ kind: 'response', name: 'error_plain', tid: 10, to: from, id: null, token: null, closer: [], error: 1, value: null,
  hex: hex(encodeReply({ ephemeral: true, closest: closer, tid: 10, from, to: from, target: null, error: 1, value: null, token: false, closer: true })) })
out.push({ kind: 'node_id', host: '127.0.0.1', port: 49737, hex: hex(peer.id('127.0.0.1', 49737)) })
for (const o of out) process.stdout.write(JSON.stringify(o) + '\n')
