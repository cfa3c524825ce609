// COUNT persistent HyperDHT nodes on HOST, bootstrapping from BOOTSTRAP (HOST:PORT), for the
// lab's DHT churn test. Prints one JSON line, {"nodes": ["HOST:PORT", ...]}, once all are
// bootstrapped; runs until SIGTERM/SIGINT (SIGKILL: the nodes vanish as a machine would).
import DHT from 'hyperdht'

const [host, boot, countText] = process.argv.slice(2)
const [bootHost, bootPort] = boot.split(':')
const bootstrap = [{ host: bootHost, port: Number(bootPort) }]
const nodes = []
for (let i = 0; i < Number(countText); i++) {
  const node = new DHT({ ephemeral: false, firewalled: false, bootstrap, host })
  await node.fullyBootstrapped()
  nodes.push(node)
}
process.stdout.write(JSON.stringify({ nodes: nodes.map((n) => `${host}:${n.address().port}`) }) + '\n')
const stop = async () => {
  for (const n of nodes) await n.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
