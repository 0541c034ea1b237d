// Decodes every message of an MCAP file the way Foxglove does: protobuf types are built from
// the FileDescriptorSet stored in the file, JSON channels are parsed as JSON. Prints one JSON
// line per message: topic, schema, log time and the decoded fields a test checks (binary
// fields as their SHA-256). Usage: node decode_mcap.js FILE
"use strict";
const fs = require("fs");
const crypto = require("crypto");
const { McapStreamReader } = require("@mcap/core");
const { loadDecompressHandlers } = require("@mcap/support");
const protobuf = require("protobufjs");
const { FileDescriptorSet } = require("protobufjs/ext/descriptor");

const sha256 = (bytes) => crypto.createHash("sha256").update(bytes).digest("hex");

const nanoseconds = (t) => (BigInt(t.seconds || 0) * 1000000000n + BigInt(t.nanos || 0)).toString();

function protobufDecoder(schema) {
  const root = protobuf.Root.fromDescriptor(FileDescriptorSet.decode(schema.data));
  const type = root.lookupType(schema.name);
  return (data) => {
    const msg = type.decode(data);
    const out = {};
    const fields = type.toObject(msg, { longs: String, enums: String });
    for (const [name, value] of Object.entries(fields)) {
      if (value instanceof Uint8Array) out[name + "_sha256"] = sha256(value);
      else if (name === "timestamp") out.timestamp_ns = nanoseconds(value);
      else out[name] = value;
    }
    return out;
  };
}

async function main() {
  const decompressHandlers = await loadDecompressHandlers();
  const reader = new McapStreamReader({ decompressHandlers, validateCrcs: true });
  reader.append(fs.readFileSync(process.argv[2]));
  const schemas = new Map();
  const channels = new Map();
  for (let rec; (rec = reader.nextRecord()); ) {
    if (rec.type === "Schema") schemas.set(rec.id, rec);
    else if (rec.type === "Channel") {
      const schema = schemas.get(rec.schemaId);
      let decode;
      if (rec.messageEncoding === "protobuf") decode = protobufDecoder(schema);
      else if (rec.messageEncoding === "json") decode = (d) => JSON.parse(Buffer.from(d));
      else decode = (d) => ({ undecoded_bytes: d.length });
      const schemaName = schema ? schema.name : "";
      const encoding = rec.messageEncoding;
      channels.set(rec.id, { topic: rec.topic, schema: schemaName, encoding, decode });
    } else if (rec.type === "Message") {
      const ch = channels.get(rec.channelId);
      const line = { topic: ch.topic, schema: ch.schema, encoding: ch.encoding,
                     log_time: rec.logTime.toString(), fields: ch.decode(rec.data) };
      process.stdout.write(JSON.stringify(line) + "\n");
    }
  }
  if (!reader.done()) throw new Error("the file ends before its footer");
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
