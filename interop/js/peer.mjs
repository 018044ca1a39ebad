// The js-libp2p side of P2PLane's interop test (p2plane/tests/interop_js.rs).
//
//   node peer.mjs dial <multiaddr> <peer id>   identify, ping, a Kademlia query, one
//                                              request and one streaming call (1000 items,
//                                              flow controlled) to a P2PLane node; one line
//                                              each
//   node peer.mjs serve                        serve the echo protocol until stdin closes
//   node peer.mjs serve-ws                     the same, listening on WebSocket
//
// It dials TCP and WebSocket (`/tcp/../ws`) addresses alike.
//
// Requests use P2PLane's per-request framing (docs/wire.md): one frame each way, a frame
// being an unsigned-varint length and a CBOR payload; answers are envelopes {"Ok": body}.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { decode, encode } from 'cborg'
import { createLibp2p } from 'libp2p'

// @libp2p/websockets dials through the global WebSocket, which Node.js has without a flag
// from version 22; before that, the `ws` package provides it.
if (typeof globalThis.WebSocket !== 'function') {
  globalThis.WebSocket = (await import('ws')).WebSocket
}

// js-libp2p 3 uses Promise.withResolvers, which Node.js gained in version 22.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const ECHO = '/p2plane-interop/echo/1.0.0'
const COUNT = '/p2plane-interop/count/1.0.0'
const KAD = '/p2plane/kad/1.0.0'

function concat (a, b) {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}

function varint (n) {
  const out = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}

function frame (value) {
  const payload = encode(value)
  return concat(varint(payload.length), payload)
}

// The frame at the start of `buf`, decoded, with where it ends; undefined while it is
// incomplete.
function parseFrame (buf) {
  let length = 0
  let i = 0
  for (let shift = 1; ; shift *= 0x80, i++) {
    if (i >= buf.length) return undefined
    length += (buf[i] & 0x7f) * shift
    if (buf[i] < 0x80) break
  }
  const start = i + 1
  if (buf.length < start + length) return undefined
  return { value: decode(buf.subarray(start, start + length)), end: start + length }
}

// Reads one frame from the stream: done as soon as the frame is complete (the sender may
// still be closing its side).
function readFrame (stream) {
  return new Promise((resolve, reject) => {
    let buf = new Uint8Array(0)
    stream.addEventListener('message', (evt) => {
      const chunk = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()
      buf = concat(buf, chunk)
      const parsed = parseFrame(buf)
      if (parsed !== undefined) resolve(parsed.value)
    })
    stream.addEventListener('close', () => reject(new Error('stream closed before a whole frame')))
  })
}

// A P2PLane streaming call (docs/wire.md, "Streaming calls"): the request [from, to], a
// window of WINDOW items for the answers and `End` (no uploads); then the handler's frames:
// its `Credit`, the numbers as `Item`s, `End`. Room is granted back in halves of the window,
// and an item beyond what was granted fails the call.
async function countStream (target) {
  const WINDOW = 16
  const BYTES = 1 << 20
  const stream = await node.dialProtocol(target, COUNT)
  stream.send(concat(concat(frame([0, 1000]), frame({ Credit: [WINDOW, BYTES] })), frame('End')))
  const result = await new Promise((resolve, reject) => {
    let buf = new Uint8Array(0)
    let received = 0
    let granted = WINDOW
    let taken = 0
    let sum = 0
    let first
    let last
    let credit = false
    stream.addEventListener('message', (evt) => {
      buf = concat(buf, evt.data instanceof Uint8Array ? evt.data : evt.data.subarray())
      for (let parsed = parseFrame(buf); parsed !== undefined; parsed = parseFrame(buf)) {
        buf = buf.subarray(parsed.end)
        const v = parsed.value
        if (v === 'End') return resolve({ received, sum, first, last, credit })
        if (v !== null && typeof v === 'object' && 'Credit' in v) {
          credit = true
        } else if (v !== null && typeof v === 'object' && 'Item' in v) {
          received++
          if (received > granted) return reject(new Error(`item ${received} beyond the ${granted} granted`))
          sum += v.Item
          if (first === undefined) first = v.Item
          last = v.Item
          if (++taken === WINDOW / 2) {
            stream.send(frame({ Credit: [taken, BYTES] }))
            granted += taken
            taken = 0
          }
        } else {
          return reject(new Error(`unexpected frame ${JSON.stringify(v)}`))
        }
      }
    })
    stream.addEventListener('close', () => reject(new Error('stream closed before its End')))
  })
  await stream.close()
  return `stream ok n=${result.received} sum=${result.sum} first=${result.first} last=${result.last} credit=${result.credit}`
}

const [mode, addr, peer] = process.argv.slice(2)
const listen = mode === 'serve-ws' ? '/ip4/127.0.0.1/tcp/0/ws' : '/ip4/127.0.0.1/tcp/0'

const node = await createLibp2p({
  addresses: { listen: [listen] },
  transports: [tcp(), webSockets()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({ protocol: KAD, clientMode: false, peerInfoMapper: passthroughMapper })
  }
})

if (mode === 'serve' || mode === 'serve-ws') {
  await node.handle(ECHO, async (stream) => {
    const request = await readFrame(stream)
    stream.send(frame({ Ok: { text: `js heard ${request.text}` } }))
    await stream.close()
  })
  console.log(`listening ${node.getMultiaddrs()[0].toString()}`)
  console.log(`peer ${node.peerId.toString()}`)
  process.stdin.resume()
  process.stdin.on('end', async () => {
    await node.stop()
    process.exit(0)
  })
} else if (mode === 'dial') {
  const target = multiaddr(addr)
  const identified = new Promise((resolve) => {
    node.addEventListener('peer:identify', (evt) => {
      if (evt.detail.peerId.toString() === peer) resolve(evt.detail)
    })
  })
  await node.dial(target)
  const info = await identified
  console.log(`identify ok agent=${info.agentVersion} echo=${info.protocols.includes(ECHO)} kad=${info.protocols.includes(KAD)}`)

  await node.services.ping.ping(target)
  console.log('ping ok')

  // The DHT adds the peer once identify says it speaks the DHT protocol; ask until it has.
  let answered = false
  for (let attempt = 0; attempt < 20 && !answered; attempt++) {
    for await (const event of node.services.dht.getClosestPeers(new TextEncoder().encode(`p2plane-interop-${attempt}`))) {
      if (event.name === 'PEER_RESPONSE' && event.from.toString() === peer) answered = true
    }
    if (!answered) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  console.log(answered ? 'kad ok' : 'kad: no answer from the P2PLane node')

  const stream = await node.dialProtocol(target, ECHO)
  stream.send(frame({ text: 'hello from js' }))
  await stream.close()
  console.log(`echo ok ${JSON.stringify(await readFrame(stream))}`)

  console.log(await countStream(target))
  await node.stop()
} else {
  console.error('usage: node peer.mjs dial <multiaddr> <peer id> | serve')
  process.exit(2)
}
