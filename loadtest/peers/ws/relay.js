"use strict";
// The load harness's ws peer: a bare WebSocket chat relay on Node.js and the
// `ws` package, the layer Socket.IO runs on, with no routing beyond "first
// agent with a free slot". It does what the harness's baseline relay
// (loadtest/src/relay.rs) does, in the same plain JSON frames on the same
// paths, so the harness's agents and customers drive it unchanged:
//
//   /v1/agents/<id>/ws?token=…   an agent desktop (hello, activity/ok,
//                                task.offered, accept/task.assigned,
//                                send/echo, end/ended, complete/completed,
//                                reject)
//   anything else                a webchat customer (history, message/ack,
//                                the agent's messages, leave)
//
// Any token is accepted; there is no HTTP API, no history after assignment,
// no persistence.
//
//   node relay.js --port 0 [--capacity 5] [--exit-with-stdin]
//
// prints `listening <port>` once it accepts connections, on 127.0.0.1 only.

const http = require("node:http");
const { WebSocketServer } = require("ws");

const { Relay, agentIdOf, listen, parseArgs, str } = require("../relay-core.js");

// One JSON text frame. A socket that is closing drops it, as the Rust
// relay's writer does once its socket failed.
function send(ws, ev) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(ev));
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const relay = new Relay(opts.capacity, send);
  const server = http.createServer({ noDelay: true }, (_req, res) => {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20 });
  wss.on("connection", (ws, req) => {
    req.socket.setNoDelay(true);
    const agentId = agentIdOf(str(req.url));
    const cust = { convId: null };
    if (agentId !== null) relay.agentConnected(agentId, ws);
    else relay.customerConnected(ws);
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      let v;
      try {
        v = JSON.parse(data);
      } catch {
        return;
      }
      if (v === null || typeof v !== "object" || Array.isArray(v)) return;
      if (agentId !== null) relay.onAgent(agentId, ws, v);
      else relay.onCustomer(cust, ws, v);
    });
    ws.on("error", () => {});
    ws.on("close", () => {
      if (agentId !== null) relay.agentGone(agentId, ws);
      else if (cust.convId !== null) relay.customerGone(cust.convId);
    });
  });
  listen(server, opts);
}

main();
