// One side of a Noise handshake, driven over stdin/stdout (JSON lines).
// IK uses hyperdht's own NoiseWrap (prologue NS_PEER_HANDSHAKE); XX uses noise-handshake with
// an empty prologue, as @hyperswarm/secret-stream does. Messages carry raw payload bytes.
//   -> {"cmd":"init","pattern":"IK"|"XX","initiator":bool,"seed":hex,"remotePublicKey":hex?}
//   <- {"event":"ready","publicKey":hex}
//   -> {"cmd":"send","payload":hex}   <- {"event":"message","message":hex}
//   -> {"cmd":"recv","message":hex}   <- {"event":"payload","payload":hex}
//   <- {"event":"final", hash, tx, rx, remotePublicKey, holepunchSecret, remoteId}  (when complete)
import readline from 'readline'
import { createRequire } from 'module'
import NoiseHandshake from 'noise-handshake'
import curve from 'noise-curve-ed'
import crypto from 'hypercore-crypto'
import NoiseSecretStream from '@hyperswarm/secret-stream'
import b4a from 'b4a'

const require = createRequire(import.meta.url)
const NoiseWrap = require('hyperdht/lib/noise-wrap.js')

const hex = (b) => b4a.toString(b, 'hex')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
let wrap = null
let hs = null

function maybeFinal () {
  if (!hs.complete) return
  if (wrap) {
    const f = wrap.final()
    out({ event: 'final', hash: hex(f.hash), tx: hex(f.tx), rx: hex(f.rx), remotePublicKey: hex(f.remotePublicKey), holepunchSecret: hex(f.holepunchSecret), remoteId: hex(f.remoteId) })
  } else {
    out({ event: 'final', hash: hex(hs.hash), tx: hex(hs.tx), rx: hex(hs.rx), remotePublicKey: hex(hs.rs), remoteId: hex(NoiseSecretStream.id(hs.hash, !hs.initiator)) })
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  try {
    if (cmd.cmd === 'init') {
      const kp = crypto.keyPair(b4a.from(cmd.seed, 'hex'))
      const rpk = cmd.remotePublicKey ? b4a.from(cmd.remotePublicKey, 'hex') : null
      if (cmd.pattern === 'IK') {
        wrap = new NoiseWrap(kp, cmd.initiator ? rpk : null)
        hs = wrap.handshake
      } else {
        hs = new NoiseHandshake('XX', cmd.initiator, kp, { curve })
        hs.initialise(b4a.alloc(0))
      }
      out({ event: 'ready', publicKey: hex(kp.publicKey) })
    } else if (cmd.cmd === 'send') {
      out({ event: 'message', message: hex(hs.send(b4a.from(cmd.payload, 'hex'))) })
      maybeFinal()
    } else if (cmd.cmd === 'recv') {
      out({ event: 'payload', payload: hex(hs.recv(b4a.from(cmd.message, 'hex'))) })
      if (wrap) wrap.remotePublicKey = b4a.toBuffer(hs.rs) // as NoiseWrap.recv does
      maybeFinal()
    }
  } catch (err) {
    out({ event: 'error', message: err.message })
  }
})
