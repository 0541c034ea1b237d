#!/usr/bin/env node
// Print the daemon's classifications from Node.js with zeromq.js (v6).
//
//   cd examples/node && npm install
//   node subscriber.js [ENDPOINT] [SOURCE] [COUNT]
//   node subscriber.js ipc:///run/streamfuse/results room1 10
//   node subscriber.js tcp://gpu-host:5562 "" 0 \
//       --client-secret keys/me.key_secret --server-public keys/server.key   # CurveZMQ
//
// It reads the daemon's results endpoint (bus.results, or bus.public_results
// from another host): classifications, never frames, audio or text. Each
// message is [topic, header, payload]: topic "class/<source>", header a
// MessagePack map (ignored here), payload one UTF-8 JSON object
// (docs/protocol.md, "Classification"; JSON Schema in
// docs/schemas/classification.schema.json). With no SOURCE it subscribes to
// the prefix "class/": every classification.
//
// CurveZMQ: with [bus.curve] enabled the daemon's TCP endpoints accept only
// keys listed in bus.curve.authorized. `streamfuse keys generate DIR --name me`
// writes DIR/me.key (give it to the operator) and DIR/me.key_secret (pass it as
// --client-secret); --server-public is the daemon's server.key.
"use strict";
const fs = require("fs");
const zmq = require("zeromq");

// The Z85 key of a key file written by `streamfuse keys generate` (ZeroMQ's ZPL format).
function readKey(path, field) {
  const m = fs.readFileSync(path, "utf8").match(new RegExp(`${field}\\s*=\\s*"([^"]{40})"`));
  if (!m) throw new Error(`${path} holds no ${field}`);
  return m[1];
}

function parseArgs(argv) {
  const flags = {};
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--client-secret" || argv[i] === "--server-public") {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a file`);
      flags[argv[i]] = argv[++i];
    } else {
      positional.push(argv[i]);
    }
  }
  if (!flags["--client-secret"] !== !flags["--server-public"]) {
    throw new Error("--client-secret and --server-public go together");
  }
  return { flags, positional };
}

async function main() {
  const { flags, positional } = parseArgs(process.argv.slice(2));
  const endpoint = positional[0] || "ipc:///run/streamfuse/results";
  const source = positional[1] || "";
  const count = Number(positional[2] || 0);
  // A classification is a few hundred bytes: refuse anything huge from the network.
  const options = { maxMessageSize: 1024 * 1024, linger: 0 };
  if (flags["--client-secret"]) {
    options.curvePublicKey = readKey(flags["--client-secret"], "public-key");
    options.curveSecretKey = readKey(flags["--client-secret"], "secret-key");
    options.curveServerKey = readKey(flags["--server-public"], "public-key");
  }
  const sock = new zmq.Subscriber(options);
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
