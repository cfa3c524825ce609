// Tether's JavaScript client: calls a gateway over Hyperswarm (HyperDHT + Noise +
// secret-stream) with Tether's RPC protocol on the protomux channel `tether-rpc/1`,
// using the messages generated from proto/ into ./gen (`tools/gen_protos.py`).
//
//   import { connectGateway } from './client.js'
//   const client = await connectGateway({ bootstrap: ['127.0.0.1:49737'], gatewayKey, token })
//   for await (const chunk of client.generate('kjv-textgen', 'In the beginning', { maxTokens: 20 })) {
//     if (chunk.payload?.kind.case === 'text') process.stdout.write(chunk.payload.kind.value)
//   }
//   const answer = client.chat('smollm2-135m-instruct', [{ role: 'user', content: 'Hi!' }])
//   await client.close()
//
// The protocol (tether/rpc/connection.py is the reference): every protomux message is one
// tether.v1.RpcFrame. The dialling side numbers its calls 1, 3, 5, ...; a call is `open`
// (method, metadata, timeout, initial window), one `message` (the request), `half_close`;
// the answer is `message`s then a `trailer` with the status. The client grants credits:
// `initial_window` messages ahead, and a `window` frame once half of them were consumed.
// Leaving a stream early sends `cancel`.

import DHT from 'hyperdht'
import Protomux from 'protomux'
import c from 'compact-encoding'
import { create, fromBinary, toBinary } from '@bufbuild/protobuf'
import { RpcFrameSchema } from './gen/tether/v1/rpc_pb.js'
import { Infer_ChunkSchema, Infer_RequestSchema } from './gen/tether/v1/infer_pb.js'
import { ListModelsRequestSchema, ListModelsResponseSchema } from './gen/tether/v1/services_pb.js'
import { StatusCode } from './gen/tether/v1/status_pb.js'

export const PROTOCOL = 'tether-rpc/1'
const INITIAL_WINDOW = 32

/** A call that ended with a status other than OK. */
export class RpcError extends Error {
  constructor (code, message, details = {}) {
    super(`${StatusCode[code] ?? code}: ${message}`)
    this.name = 'RpcError'
    this.code = code
    this.codeName = (StatusCode[code] ?? String(code)).replace(/^STATUS_CODE_/, '')
    this.details = details
  }
}

/** One RPC connection over a protomux channel: concurrent calls, credit flow control. */
export class RpcConnection {
  constructor (socket) {
    this.socket = socket
    this.calls = new Map()
    this.nextId = 1 // the dialling side's ids are odd
    this.closedError = null
    this.mux = Protomux.from(socket)
    this.opened = new Promise((resolve, reject) => {
      this.channel = this.mux.createChannel({
        protocol: PROTOCOL,
        onopen: resolve,
        onclose: () => {
          reject(new RpcError(StatusCode.UNAVAILABLE, 'the peer closed the RPC channel'))
          this._fail(new RpcError(StatusCode.UNAVAILABLE, 'connection closed'))
        }
      })
    })
    this.message = this.channel.addMessage({
      encoding: c.raw,
      onmessage: (bytes) => this._onFrame(bytes)
    })
    this.channel.open()
    socket.on('close', () => this._fail(new RpcError(StatusCode.UNAVAILABLE, 'connection closed')))
    socket.on('error', () => {}) // surfaced through 'close'
  }

  _send (frame) {
    this.message.send(toBinary(RpcFrameSchema, create(RpcFrameSchema, frame)))
  }

  _fail (error) {
    if (this.closedError) return
    this.closedError = error
    for (const call of this.calls.values()) call.push({ error })
    this.calls.clear()
  }

  _onFrame (bytes) {
    let frame
    try {
      frame = fromBinary(RpcFrameSchema, bytes)
    } catch (err) {
      return // a frame we cannot read fails nothing we know of
    }
    const call = this.calls.get(Number(frame.callId))
    if (!call) return
    const kind = frame.kind
    if (kind.case === 'message') {
      call.push({ payload: kind.value.payload })
    } else if (kind.case === 'trailer') {
      this.calls.delete(call.id)
      const t = kind.value
      call.push(t.code === StatusCode.OK ? { end: true } : { error: new RpcError(t.code, t.message, t.details) })
    }
  }

  /** Server-streaming call: yields the decoded responses. */
  async * stream (method, requestBytes, { metadata = {}, timeoutMs = 0 } = {}) {
    await this.opened
    if (this.closedError) throw this.closedError
    const id = this.nextId
    this.nextId += 2
    const queue = []
    let wake = null
    const call = { id, push: (item) => { queue.push(item); if (wake) { wake(); wake = null } } }
    this.calls.set(id, call)
    const callId = BigInt(id)
    this._send({ callId, kind: { case: 'open', value: { method, metadata, timeoutMs: BigInt(timeoutMs), initialWindow: INITIAL_WINDOW } } })
    this._send({ callId, kind: { case: 'message', value: { payload: requestBytes } } })
    this._send({ callId, kind: { case: 'halfClose', value: {} } })
    let consumed = 0
    let finished = false
    try {
      while (true) {
        if (queue.length === 0) await new Promise((resolve) => { wake = resolve })
        const item = queue.shift()
        if (item.error) { finished = true; throw item.error }
        if (item.end) { finished = true; return }
        consumed += 1
        if (consumed >= INITIAL_WINDOW / 2) {
          this._send({ callId, kind: { case: 'window', value: { credits: consumed } } })
          consumed = 0
        }
        yield item.payload
      }
    } finally {
      if (!finished && !this.closedError) {
        this.calls.delete(id)
        this._send({ callId, kind: { case: 'cancel', value: { reason: 'the client left' } } })
      }
    }
  }

  /** Unary call: the one decoded response. */
  async unary (method, requestBytes, options) {
    let answer = null
    for await (const payload of this.stream(method, requestBytes, options)) answer = payload
    if (answer === null) throw new RpcError(StatusCode.INTERNAL, `${method} sent no response`)
    return answer
  }
}

/** A client of one gateway: `infer`, `generate`, `chat`, `embed`, `listModels`. */
export class GatewayClient {
  constructor (rpc, token, close) {
    this.rpc = rpc
    this.metadata = { authorization: `Bearer ${token}` }
    this._close = close
  }

  async * infer (request, { timeoutMs = 120000 } = {}) {
    const bytes = toBinary(Infer_RequestSchema, create(Infer_RequestSchema, request))
    const chunks = this.rpc.stream('/tether.v1.Gateway/Infer', bytes, { metadata: this.metadata, timeoutMs })
    for await (const payload of chunks) yield fromBinary(Infer_ChunkSchema, payload)
  }

  /**
   * Text generation; options: version, maxTokens, minTokens, temperature (0: the model's
   * default), seed, greedy (always the likeliest token), stop (strings that end the answer).
   */
  generate (model, prompt, options = {}) {
    return this.infer(textRequest(model, { case: 'text', value: prompt }, options), options)
  }

  /**
   * The answer to a conversation, rendered by the worker with the model's chat template:
   * `messages` are `{ role, content }` objects, oldest first; options as for `generate`.
   */
  chat (model, messages, options = {}) {
    const value = { messages: messages.map(({ role, content }) => ({ role, content })) }
    return this.infer(textRequest(model, { case: 'messages', value }, options), options)
  }

  embed (model, texts, { version = '', timeoutMs } = {}) {
    return this.infer({ modelId: model, version, input: { kind: { case: 'texts', value: { texts } } } }, { timeoutMs })
  }

  async listModels () {
    const bytes = toBinary(ListModelsRequestSchema, create(ListModelsRequestSchema, {}))
    const answer = await this.rpc.unary('/tether.v1.Gateway/ListModels', bytes, { metadata: this.metadata, timeoutMs: 30000 })
    return fromBinary(ListModelsResponseSchema, answer)
  }

  close () { return this._close() }
}

function textRequest (model, kind, { version = '', maxTokens = 0, minTokens = 0, temperature = 0, seed = 0, greedy = false, stop = [] } = {}) {
  const params = { maxTokens, minTokens, seed: BigInt(seed), stop }
  // temperatureValue has presence: unset is the model's default, 0 greedy decoding.
  if (greedy) params.temperatureValue = 0
  else if (temperature) params.temperatureValue = temperature
  return { modelId: model, version, input: { kind }, params }
}

/**
 * Bootstrap nodes from `HOST:PORT` strings, each possibly a comma-separated list (as
 * `tether up` prints it), or `{ host, port }` objects. A malformed entry is an Error
 * that names it.
 */
export function parseBootstrap (list) {
  const items = (Array.isArray(list) ? list : [list]).flatMap((b) =>
    typeof b === 'string' ? b.split(',').map((s) => s.trim()).filter(Boolean) : [b])
  if (!items.length) throw new Error('no bootstrap node: pass HOST:PORT (the one `tether up` prints)')
  return items.map((b) => {
    if (typeof b !== 'string') return b
    const i = b.lastIndexOf(':')
    const host = b.slice(0, i).replace(/^\[(.*)\]$/, '$1')
    const port = Number(b.slice(i + 1))
    if (i < 1 || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`bootstrap ${JSON.stringify(b)} is not HOST:PORT`)
    }
    return { host, port }
  })
}

/** Connect to the gateway with public key `gatewayKey` (hex or bytes). */
export async function connectGateway ({ bootstrap, gatewayKey, token, host = '127.0.0.1' }) {
  const dht = new DHT({ bootstrap: parseBootstrap(bootstrap), host })
  const key = typeof gatewayKey === 'string' ? Buffer.from(gatewayKey, 'hex') : gatewayKey
  const socket = dht.connect(key)
  await new Promise((resolve, reject) => {
    socket.once('open', resolve)
    socket.once('error', reject)
  })
  const rpc = new RpcConnection(socket)
  await rpc.opened
  const close = async () => {
    socket.destroy()
    await dht.destroy()
  }
  return new GatewayClient(rpc, token, close)
}
