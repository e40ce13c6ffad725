"use strict";
// The load harness's Socket.IO peer: the chat relay someone would write with
// socket.io instead of running Switchboard. It does what the harness's
// baseline relay (loadtest/src/relay.rs) does, in the same JSON protocol
// subset (hello/activity/ok, offered/accept/assigned, message/ack, send/echo,
// end/ended, complete/completed, reject, leave): first agent with a free slot,
// no routing beyond that, no persistence, any token accepted, no HTTP API.
//
// Every harness frame travels as one Socket.IO event named "msg" whose single
// argument is the JSON object, in both directions. A connection says who it is
// in its handshake query: `path=/v1/agents/<id>/ws` for an agent desktop,
// anything else (the harness sends `path=/v1/webchat/ws`) for a webchat
// customer; `token` is taken and ignored.
//
//   node relay.js --port 0 [--capacity 5] [--exit-with-stdin]
//
// prints `listening <port>` once it accepts connections, on 127.0.0.1 only.

const http = require("node:http");
const { Server } = require("socket.io");

const { Relay, agentIdOf, listen, parseArgs, str } = require("../relay-core.js");

const EVENT = "msg";
const send = (socket, ev) => socket.emit(EVENT, ev);

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const relay = new Relay(opts.capacity, send);
  const server = http.createServer({ noDelay: true }, (_req, res) => {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
  });
  io.on("connection", (socket) => {
    const agentId = agentIdOf(str(socket.handshake.query.path));
    const cust = { convId: null };
    if (agentId !== null) relay.agentConnected(agentId, socket);
    else relay.customerConnected(socket);
    socket.on(EVENT, (v) => {
      if (v === null || typeof v !== "object" || Array.isArray(v)) return;
      if (agentId !== null) relay.onAgent(agentId, socket, v);
      else relay.onCustomer(cust, socket, v);
    });
    socket.on("disconnect", () => {
      if (agentId !== null) relay.agentGone(agentId, socket);
      else if (cust.convId !== null) relay.customerGone(cust.convId);
    });
  });
  listen(server, opts);
}

main();
