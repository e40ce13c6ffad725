"use strict";
// What the load harness's two Node.js peers share: the chat relay itself (no
// routing beyond "first agent with a free slot"), speaking the same plain
// JSON frames as the harness's baseline relay (loadtest/src/relay.rs), so the
// harness's agents and customers drive any of them unchanged. Each peer
// (`ws/relay.js`, `socketio/relay.js`) only adds its transport: how a
// connection is accepted, how one event is sent, and its command line.

const AGENT_PREFIX = "/v1/agents/";

function usage(why) {
  process.stderr.write(
    `relay.js: ${why}\nusage: node relay.js --port N [--capacity N] [--exit-with-stdin]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: null, capacity: 5, exitWithStdin: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const int = (name, min, max) => {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
        usage(`${name} needs a whole number in ${min}..=${max}`);
      }
      return Number(v);
    };
    if (a === "--port") opts.port = int("--port", 0, 65535);
    else if (a === "--capacity") opts.capacity = int("--capacity", 1, 1000);
    else if (a === "--exit-with-stdin") opts.exitWithStdin = true;
    else if (a === "--help" || a === "-h") usage("help");
    else usage(`unknown argument ${JSON.stringify(a)}`);
  }
  if (opts.port === null) usage("--port is required (0: any free port)");
  return opts;
}

const str = (v) => (typeof v === "string" ? v : "");
const strOrNull = (v) => (typeof v === "string" ? v : null);
const orNull = (v) => (v === undefined ? null : v);

class Relay {
  /** `send(conn, event)`: one JSON event to one connection, as the transport does it. */
  constructor(capacity, send) {
    this.capacity = capacity;
    this.send = send;
    this.agents = new Map(); // agent id → { conn, free, available }
    // conversation id → { customer, agent, taskId, seq, history, offered, ended }
    // (`history`: the messages before assignment, for `task.assigned`)
    this.convs = new Map();
    this.tasks = new Map(); // task id → conversation id
    this.queue = []; // conversation ids waiting for an agent, oldest first
    this.nextId = 0;
  }

  id(prefix) {
    this.nextId += 1;
    return `${prefix}${this.nextId}`;
  }

  // Offers waiting conversations to the first agents with a free slot.
  dispatch() {
    while (this.queue.length > 0) {
      let agentId = null;
      for (const [id, a] of this.agents) {
        if (a.available && a.free > 0) {
          agentId = id;
          break;
        }
      }
      if (agentId === null) return;
      const convId = this.queue.shift();
      const conv = this.convs.get(convId);
      if (conv === undefined) continue;
      const agent = this.agents.get(agentId);
      agent.free -= 1;
      conv.agent = agentId;
      conv.offered = true;
      const last = conv.history[conv.history.length - 1];
      this.send(agent.conn, {
        type: "task.offered",
        task: {
          id: conv.taskId,
          conversation_id: convId,
          channel: "webchat",
          customer: { address: convId, name: null },
          preview: last === undefined ? null : last.text,
          state: "reserved",
        },
      });
    }
  }

  message(convId, from, text, clientMsgId) {
    const conv = this.convs.get(convId);
    conv.seq += 1;
    return {
      id: `m${conv.seq}`,
      conversation_id: convId,
      seq: conv.seq,
      from,
      text,
      attachments: [],
      client_msg_id: clientMsgId,
    };
  }

  agentConnected(id, conn) {
    this.send(conn, { type: "hello", agent: { id }, activity: "offline", tasks: [] });
    this.agents.set(id, { conn, free: this.capacity, available: false });
  }

  agentGone(id, conn) {
    const a = this.agents.get(id);
    if (a !== undefined && a.conn === conn) this.agents.delete(id);
  }

  onAgent(id, conn, v) {
    const ref = orNull(v.ref);
    switch (v.type) {
      case "activity": {
        const a = this.agents.get(id);
        if (a !== undefined) a.available = v.activity === "available";
        this.send(conn, { type: "ok", ref });
        this.dispatch();
        break;
      }
      case "accept": {
        const taskId = str(v.task_id);
        const convId = this.tasks.get(taskId);
        const conv = convId === undefined ? undefined : this.convs.get(convId);
        if (conv === undefined) return;
        const history = conv.history;
        conv.history = [];
        const last = history[history.length - 1];
        this.send(conn, {
          type: "task.assigned",
          task: {
            id: taskId,
            conversation_id: convId,
            channel: "webchat",
            preview: last === undefined ? null : last.text,
            state: "assigned",
          },
          history,
          ref,
        });
        this.send(conv.customer, { type: "agent.joined", conversation_id: convId, agent: { name: id } });
        break;
      }
      case "send": {
        const convId = str(v.conversation_id);
        const conv = this.convs.get(convId);
        if (conv === undefined) return;
        const m = this.message(convId, "agent", str(v.text), strOrNull(v.client_msg_id));
        m.agent_id = id;
        this.send(conv.customer, { type: "message", conversation_id: convId, message: m });
        this.send(conn, { type: "message", conversation_id: convId, message: m, ref });
        break;
      }
      case "end": {
        const convId = str(v.conversation_id);
        const conv = this.convs.get(convId);
        if (conv === undefined) return;
        conv.ended = true;
        this.send(conv.customer, { type: "conversation.ended", conversation_id: convId });
        this.send(conn, { type: "conversation.ended", conversation_id: convId, task_id: conv.taskId, ref });
        break;
      }
      case "complete": {
        const taskId = str(v.task_id);
        const convId = this.tasks.get(taskId);
        if (convId === undefined) return;
        this.tasks.delete(taskId);
        this.convs.delete(convId);
        const a = this.agents.get(id);
        if (a !== undefined) a.free += 1;
        this.send(conn, { type: "task.completed", task_id: taskId, conversation_id: convId, ref });
        this.dispatch();
        break;
      }
      case "reject":
        this.send(conn, { type: "ok", ref });
        break;
      default:
        break;
    }
  }

  customerConnected(conn) {
    this.send(conn, { type: "history", conversation_id: null, messages: [] });
  }

  // `cust.convId`: the customer's conversation, once its first message opened one.
  onCustomer(cust, conn, v) {
    switch (v.type) {
      case "message": {
        let isNew = false;
        if (cust.convId === null || !this.convs.has(cust.convId)) {
          const c = this.id("cv");
          const taskId = this.id("tk");
          this.convs.set(c, {
            customer: conn,
            agent: null,
            taskId,
            seq: 0,
            history: [],
            offered: false,
            ended: false,
          });
          this.tasks.set(taskId, c);
          cust.convId = c;
          isNew = true;
        }
        const c = cust.convId;
        const cmid = strOrNull(v.client_msg_id);
        const m = this.message(c, "customer", str(v.text), cmid);
        this.send(conn, {
          type: "ack",
          conversation_id: c,
          client_msg_id: cmid,
          message_id: m.id,
          seq: m.seq,
          ref: orNull(v.ref),
        });
        const ev = { type: "message", conversation_id: c, message: m };
        this.send(conn, ev);
        const conv = this.convs.get(c);
        if (!conv.offered) {
          conv.history.push(m);
        } else if (conv.agent !== null) {
          if (conv.history.length === 0) {
            const a = this.agents.get(conv.agent);
            if (a !== undefined) this.send(a.conn, ev);
          } else {
            // Offered but not accepted yet: goes out with the history.
            conv.history.push(m);
          }
        }
        if (isNew) {
          this.queue.push(c);
          this.dispatch();
        }
        break;
      }
      case "leave":
        if (cust.convId !== null) {
          const c = cust.convId;
          cust.convId = null;
          this.customerGone(c);
        }
        break;
      default:
        break;
    }
  }

  // The customer left or disconnected: a conversation no agent holds goes
  // away; one an agent holds ends (the agent still completes it).
  customerGone(convId) {
    const conv = this.convs.get(convId);
    if (conv === undefined) return;
    if (conv.agent === null) {
      this.convs.delete(convId);
      this.tasks.delete(conv.taskId);
      const i = this.queue.indexOf(convId);
      if (i >= 0) this.queue.splice(i, 1);
    } else if (!conv.ended) {
      conv.ended = true;
      const a = this.agents.get(conv.agent);
      if (a !== undefined) {
        this.send(a.conn, { type: "conversation.ended", conversation_id: convId, task_id: conv.taskId });
      }
    }
  }
}

// The agent id in `/v1/agents/<id>/ws`, or null for a customer.
function agentIdOf(url) {
  const path = url.split("?", 1)[0];
  if (!path.startsWith(AGENT_PREFIX)) return null;
  return path.slice(AGENT_PREFIX.length).replace(/(?:\/ws)+$/, "");
}

/** Listen on 127.0.0.1 as the harness expects: print `listening <port>`, and
 * (with --exit-with-stdin) exit when the harness's end of stdin closes. */
function listen(server, opts) {
  server.on("error", (e) => {
    process.stderr.write(`relay.js: cannot listen on 127.0.0.1:${opts.port}: ${e.message}\n`);
    process.exit(1);
  });
  // The same listen backlog as the broker's and the baseline relay's.
  server.listen({ host: "127.0.0.1", port: opts.port, backlog: 4096 }, () => {
    process.stdout.write(`listening ${server.address().port}\n`);
  });
  if (opts.exitWithStdin) {
    // Started by the harness: go away with it, even if it could not stop us.
    process.stdin.on("end", () => process.exit(0));
    process.stdin.on("error", () => process.exit(0));
    process.stdin.resume();
  }
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
}

module.exports = { AGENT_PREFIX, Relay, agentIdOf, listen, parseArgs, str };
