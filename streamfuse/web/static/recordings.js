// The recordings page: the MCAP files under record.path, with a download link each.
"use strict";

function td(content) {
  const c = document.createElement("td");
  c.append(content);
  return c;
}

async function load() {
  const r = await fetch("/api/recordings");
  const data = await r.json();
  document.getElementById("where").textContent =
    `${data.files.length} recording(s) in ${data.path}`;
  document.querySelector("#files tbody").replaceChildren(...data.files.map(f => {
    const a = document.createElement("a");
    a.href = `/recordings/${encodeURIComponent(f.name)}`;
    a.textContent = f.name;
    a.download = f.name;
    const start = f.start_ns === null ? "–" : new Date(f.start_ns / 1e6).toISOString().replace("T", " ").slice(0, 19);
    const dur = f.duration_s === null ? "–" : `${f.duration_s.toFixed(1)} s`;
    const streams = f.error ? `unreadable: ${f.error}` : (f.complete ? f.streams.join(", ") : "(being written)");
    const tr = document.createElement("tr");
    tr.append(td(a), td(start), td(dur), td(`${(f.size_bytes / 1e6).toFixed(2)} MB`), td(streams));
    return tr;
  }));
}

load();
setInterval(load, 5000);
