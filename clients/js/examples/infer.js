#!/usr/bin/env node
// Stream an answer from a Tether gateway, one JSON line per chunk:
//
//   node clients/js/examples/infer.js --bootstrap HOST:PORT --gateway KEY --token TOKEN \
//        [--model kjv-textgen] [--prompt TEXT] [--max-tokens N] [--greedy] [--embed TEXT ...]
//        [--chat MESSAGE [--system TEXT]] [--list-models]
//
// (`tether up` prints the bootstrap, a comma-separated list, the gateway key and a token;
// TETHER_BOOTSTRAP and TETHER_TOKEN are read when the flags are absent.) Exits 1 with
// {"error": CODE, "message": ...} when the call fails, and with one line on stderr (no
// stack trace; TETHER_DEBUG=1 shows it) for anything else, e.g. an unreachable network.
import { connectGateway, RpcError } from '../src/client.js'

const args = process.argv.slice(2)
const opt = (name, fallback = null) => { const i = args.indexOf(name); return i === -1 ? fallback : args[i + 1] }
const all = (name) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []))
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

// Anything that is not an answer or a typed error: one line, no stack trace.
const fail = (err) => {
  process.stderr.write(`infer.js: ${err?.message ?? err}\n`)
  if (process.env.TETHER_DEBUG) process.stderr.write(`${err?.stack}\n`)
  process.exit(1)
}
process.on('uncaughtException', fail)
process.on('unhandledRejection', fail)

const bootstrap = all('--bootstrap')
const gatewayKey = opt('--gateway')
if (!gatewayKey || !/^[0-9a-f]{64}$/i.test(gatewayKey)) {
  fail(new Error(`--gateway ${JSON.stringify(gatewayKey)} is not a public key (64 hex characters)`))
}
let client
try {
  client = await connectGateway({
    bootstrap: bootstrap.length ? bootstrap : (process.env.TETHER_BOOTSTRAP ?? []),
    gatewayKey,
    token: opt('--token', process.env.TETHER_TOKEN)
  })
} catch (err) {
  fail(err)
}
let code = 0
try {
  if (args.includes('--list-models')) {
    const listed = await client.listModels()
    out({ models: listed.models.map((r) => `${r.model.modelId}@${r.model.version}`) })
  } else {
    const texts = all('--embed')
    const options = { maxTokens: Number(opt('--max-tokens', '20')), greedy: args.includes('--greedy') }
    const messages = [
      ...(opt('--system') === null ? [] : [{ role: 'system', content: opt('--system') }]),
      { role: 'user', content: opt('--chat') }
    ]
    const chunks = texts.length
      ? client.embed(opt('--model', 'all-minilm-l6-v2'), texts)
      : opt('--chat') !== null
        ? client.chat(opt('--model', 'kjv-textgen'), messages, options)
        : client.generate(opt('--model', 'kjv-textgen'), opt('--prompt', 'And God said'), options)
    for await (const chunk of chunks) {
      const kind = chunk.payload?.kind
      if (kind?.case === 'text') out({ seq: Number(chunk.seq), text: kind.value })
      if (kind?.case === 'embedding') out({ index: kind.value.index, dim: kind.value.values.length })
      if (chunk.done) out({ done: true, outputTokens: chunk.usage?.outputTokens ?? 0 })
    }
  }
} catch (err) {
  if (!(err instanceof RpcError)) fail(err)
  out({ error: err.codeName, message: err.message })
  code = 1
} finally {
  await client.close()
}
process.exit(code)
