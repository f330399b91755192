"use strict";
// A reference server of bench/fanout.py: node's `ws`, run as `node fanout_server.js`.
//
// It speaks what bench/_fanout_server.py speaks: WebSocket clients on
// ws://127.0.0.1:PORT/ws (a free port), the subscribe frame
// {"action":"subscribe","rooms":["bench"],"ref":1} answered with a reply, and
// each event encoded once per message (JSON.stringify, then one Buffer) and
// sent to every subscribed connection with the `ws` library's send(), the
// loop its documentation gives for a broadcast.
//
// Control channel: JSON lines, commands on stdin, one line answered per
// command on stdout (the first line, {"ready": ...}, gives the port):
//   {"cmd": "stats", "gc": bool}: own CPU seconds (process.cpuUsage(): cpu =
//       user + sys, and user, sys apart), RSS (process.memoryUsage.rss()), clients.
//   {"cmd": "publish", "n": M, "pad": K, "burst": bool}: publish M events, a
//       turn of the event loop (setImmediate) after each, or back to back
//       with burst.
//   {"cmd": "quit"}: exit at once.
// It exits by itself when stdin closes or after --max-seconds.

const http = require("node:http");
const readline = require("node:readline");
const { performance } = require("node:perf_hooks");
const { WebSocket, WebSocketServer } = require("ws");

const ROOM = "bench";
const EVENT_TYPE = "bench.event";
const PROTOCOL = "roomcast.v1";
const BACKLOG = 4096;
const ACK = JSON.stringify({
  type: "connection.ack",
  payload: { clientId: "floor", protocol: PROTOCOL },
});

function option(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

const maxSeconds = Number(option("--max-seconds", "900"));
const node = Math.floor(Math.random() * 0xffffffff)
  .toString(16)
  .padStart(8, "0");
const conns = new Set();
let clients = 0;
let sequence = 0;

// time.time() of the Python servers, with sub-millisecond resolution.
function now() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function frame(seq, pad) {
  sequence += 1;
  return JSON.stringify({
    type: EVENT_TYPE,
    room: ROOM,
    id: `${node}-${sequence.toString(16)}`,
    payload: { t: now(), seq, pad },
    timestamp: Date.now(),
    userId: null,
  });
}

function cpuTimes() {
  const { user, system } = process.cpuUsage();
  return { cpu: (user + system) / 1e6, user: user / 1e6, sys: system / 1e6 };
}

function writeLine(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

const server = http.createServer((_request, response) => {
  response.writeHead(404).end();
});
const wss = new WebSocketServer({
  server,
  path: "/ws",
  perMessageDeflate: false,
  clientTracking: false,
  handleProtocols: (protocols) => (protocols.has(PROTOCOL) ? PROTOCOL : false),
});

wss.on("connection", (ws) => {
  clients += 1;
  ws.on("error", () => {});
  ws.on("close", () => {
    conns.delete(ws);
    clients -= 1;
  });
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const request = JSON.parse(data.toString());
    if (request.action !== "subscribe") return;
    const rooms = {};
    for (const room of request.rooms || []) rooms[room] = { ok: true };
    conns.add(ws);
    ws.send(
      JSON.stringify({ type: "reply", ref: request.ref ?? null, ok: true, payload: { rooms } }),
    );
  });
  ws.send(ACK);
});

const turn = () => new Promise((resolve) => setImmediate(resolve));

async function publish(n, pad, burst) {
  const options = { binary: false };
  for (let seq = 0; seq < n; seq++) {
    const data = Buffer.from(frame(seq, pad));
    for (const ws of conns) {
      if (ws.readyState === WebSocket.OPEN) ws.send(data, options);
    }
    if (!burst) await turn();
  }
}

async function command(line) {
  const request = JSON.parse(line);
  switch (request.cmd) {
    case "stats":
      if (request.gc && typeof global.gc === "function") global.gc();
      return {
        ...cpuTimes(),
        rss: process.memoryUsage.rss(),
        clients,
        subscribed: conns.size,
      };
    case "publish": {
      const pad = "x".repeat(Number(request.pad ?? 60));
      const before = cpuTimes();
      const t0 = now();
      await publish(Number(request.n), pad, Boolean(request.burst));
      const t1 = now();
      const after = cpuTimes();
      return {
        t0,
        t1,
        cpu0: before.cpu,
        cpu1: after.cpu,
        user0: before.user,
        sys0: before.sys,
      };
    }
    case "profile":
      return { profiling: false };
    case "quit":
      process.exit(0);
      return null;
    default:
      return { error: `unknown command ${JSON.stringify(request.cmd)}` };
  }
}

setTimeout(() => process.exit(0), maxSeconds * 1000);

server.listen({ host: "127.0.0.1", port: 0, backlog: BACKLOG }, () => {
  writeLine({ ready: true, port: server.address().port, pid: process.pid, kind: "node-ws" });
  // One command at a time, in order, as the Python servers take them.
  let chain = Promise.resolve();
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    chain = chain.then(async () => writeLine(await command(line)));
  });
  lines.on("close", () => process.exit(0));
});
