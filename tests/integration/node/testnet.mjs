// A loopback HyperDHT testnet for Tether's integration tests: createTestnet(N) from the pinned
// hyperdht, bound to 127.0.0.1. Prints {"bootstrap":[{"host","port"},...]} on one line, then
// runs until stdin closes.
import createTestnet from 'hyperdht/testnet.js'

const size = Number(process.argv[2] || 3)
const testnet = await createTestnet(size, { host: '127.0.0.1' })
process.stdout.write(JSON.stringify({ bootstrap: testnet.bootstrap }) + '\n')
process.stdin.resume()
process.stdin.on('end', async () => { await testnet.destroy(); process.exit(0) })
