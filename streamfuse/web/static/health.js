// The health page: /api/health once a second (the supervisor's children, and the same
// metrics as /metrics, read from the run directory by the web process).
"use strict";

function cell(v, cls) {
  const td = document.createElement("td");
  td.textContent = v === null || v === undefined || v === "" ? "–" : v;
  if (cls) td.className = cls;
  return td;
}

function rows(id, items, fn) {
  document.querySelector(`#${id} tbody`).replaceChildren(...items.map(it => {
    const tr = document.createElement("tr");
    tr.append(...fn(it));
    return tr;
  }));
}

function render(h) {
  const models = (h.models || []).join(", ") || h.model_state || "none";
  const web = h.web || {dropped: {}, clients: 0};
  const drops = Object.entries(web.dropped).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  document.getElementById("summary").textContent = h.supervised
    ? `model ${models} · device ${(h.devices || []).join(", ") || "?"} · ` +
      `${web.clients} browser(s) live, updates dropped for slow ones: ${drops}`
    : "not started by streamfuse run: no children or metrics to show";
  rows("children", h.children, c => [
    cell(c.name), cell(c.state, c.state === "running" ? "ok" : "bad"), cell(c.pid),
    cell(c.restarts, c.restarts ? "bad" : ""), cell(c.last_exit), cell(c.reported + (c.device ? ` (${c.device})` : ""))]);
  rows("streams", h.streams, s => [cell(s.topic), cell(s.rate_hz), cell(s.messages),
    cell(s.dropped, s.dropped ? "bad" : ""), cell(s.seq_gaps), cell(s.late), cell(s.absent_windows)]);
  rows("classes", h.classifications || [], c => [cell(c.source), cell(c.rate_hz), cell(c.total)]);
  const w = [["batch size", h.batch_size], ["inference ms", h.inference_ms]];
  for (const [part, q] of Object.entries(h.latency_ms || {})) w.push([`latency_ms.${part}`, q]);
  rows("worker", w.filter(([, q]) => q), ([name, q]) => [cell(name), cell(q.count), cell(q.mean),
    cell(q.p50), cell(q.p90), cell(q.p99)]);
}

async function refresh() {
  const conn = document.getElementById("conn");
  try {
    const r = await fetch("/api/health");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
    conn.textContent = `updated ${new Date().toLocaleTimeString()}`;
    conn.className = "conn ok";
  } catch (e) {
    conn.textContent = `no answer (${e.message})`;
    conn.className = "conn bad";
  }
  setTimeout(refresh, 1000);
}

refresh();
