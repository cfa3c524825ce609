// A 3-node HyperDHT testnet on 127.0.0.1 for the RPC benchmark.
// Prints {"bootstrap":[{host,port}]} and runs until stdin closes.
import createTestnet from 'hyperdht/testnet.js'

const testnet = await createTestnet(3, { host: '127.0.0.1' })
process.stdout.write(JSON.stringify({ bootstrap: testnet.bootstrap }) + '\n')
process.stdin.resume()
process.stdin.on('end', async () => { await testnet.destroy(); process.exit(0) })
