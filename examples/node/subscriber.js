#!/usr/bin/env node
// Print the daemon's classifications from Node.js with zeromq.js (v6).
//
//   cd examples/node && npm install
//   node subscriber.js [ENDPOINT] [SOURCE] [COUNT]
//   node subscriber.js ipc:///run/streamfuse/out room1 10
//
// Each message is [topic, header, payload]: topic "class/<source>", header a
// MessagePack map (ignored here), payload one UTF-8 JSON object (DESIGN.md
// section 3). With no SOURCE it subscribes to the prefix "class/": every
// classification and nothing else.
"use strict";
const zmq = require("zeromq");

async function main() {
  const endpoint = process.argv[2] || "ipc:///run/streamfuse/out";
  const source = process.argv[3] || "";
  const count = Number(process.argv[4] || 0);
  const sock = new zmq.Subscriber({ maxMessageSize: 64 * 1024 * 1024, linger: 0 });
  sock.connect(endpoint);
  sock.subscribe(source ? `class/${source}` : "class/");
  const stop = () => sock.close();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  let n = 0;
  try {
    for await (const [topic, , payload] of sock) {
      if (!topic.toString().startsWith("class/") || payload === undefined) continue;
      const c = JSON.parse(payload.toString("utf8"));
      const present = Object.keys(c.present).filter((k) => c.present[k]).join("+");
      const score = Math.max(...Object.values(c.scores));
      console.log(`${c.source} ${c.label} ${score.toFixed(2)} [${present}] ${c.latency_ms.total.toFixed(1)} ms`);
      if (count && ++n >= count) break;
    }
  } finally {
    if (!sock.closed) sock.close();
  }
}

main().catch((err) => {
  console.error(`subscriber: ${err.message}`);
  process.exit(1);
});
