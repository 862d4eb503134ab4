// A Node.js `ws` + `@msgpack/msgpack` broadcast server: the stack many chat
// servers are built on, as a peer for Courier's load tester
// (benches/README.md). Usage: node server.js PORT
//
// Protocol (binary frames, one MessagePack map each), the same as the bare
// tokio-tungstenite peer (benches/peers/tungstenite.rs):
//   {type: "join"}             -> {type: "ack"}; the connection gets pushes
//   {type: "send", text: "…"}  -> {type: "ack"}; every joined connection gets
//                                 {type: "new_message", text: "…"}
// A push is encoded once and the same buffer is sent to every recipient. A
// connection with more than MAX_BUFFERED bytes unsent is a slow consumer and
// is closed (the bounded queue of the other servers).
'use strict';

const { WebSocketServer } = require('ws');
const { encode, decode } = require('@msgpack/msgpack');

const port = Number(process.argv[2] || 9002);
const MAX_BUFFERED = 1024 * 1024;
const ACK = Buffer.from(encode({ type: 'ack' }));
const joined = new Set();
let slow = 0;

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    let frame;
    try {
      frame = decode(data);
    } catch (e) {
      return;
    }
    if (frame.type === 'join') {
      joined.add(ws);
      ws.send(ACK);
    } else if (frame.type === 'send' && typeof frame.text === 'string') {
      const push = Buffer.from(encode({ type: 'new_message', text: frame.text }));
      for (const peer of joined) {
        if (peer.bufferedAmount > MAX_BUFFERED) {
          slow += 1;
          joined.delete(peer);
          peer.terminate();
        } else {
          peer.send(push);
        }
      }
      ws.send(ACK);
    }
  });
  ws.on('close', () => joined.delete(ws));
  ws.on('error', () => joined.delete(ws));
});

wss.on('listening', () => console.log(`node ws peer listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => {
  console.log(`slow consumers closed: ${slow}`);
  process.exit(0);
});
