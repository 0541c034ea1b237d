// The live page: one panel per source, fed by the console's WebSocket (/ws).
// Protocol (streamfuse/web/live.py): JSON text updates and binary camera frames; the page
// answers every message with "a" so the server knows it keeps up (it sends fewer frames
// to a page that does not).
"use strict";

const TIMELINE_NS = 180e9;
const panels = new Map(); // source -> {root, timeline: [[t0, t1, label]], ...}

function colour(label) {
  let h = 0;
  for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${(h * 137) % 360}, 65%, 55%)`;
}

function fmtTime(ns) {
  return new Date(ns / 1e6).toISOString().slice(11, 23);
}

function panel(source) {
  let p = panels.get(source);
  if (p) return p;
  const root = document.getElementById("source-tpl").content.firstElementChild.cloneNode(true);
  root.dataset.source = source;
  root.querySelector(".name").textContent = source;
  document.getElementById("empty")?.remove();
  const all = [...panels.keys(), source].sort();
  const main = document.getElementById("sources");
  const next = all[all.indexOf(source) + 1];
  main.insertBefore(root, next ? panels.get(next).root : null);
  p = {root, timeline: [], url: null};
  panels.set(source, p);
  return p;
}

function showFrame(buf) {
  const view = new DataView(buf);
  const n = view.getUint16(0);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 2, n)));
  const p = panel(meta.source);
  const img = p.root.querySelector(".frame");
  const url = URL.createObjectURL(new Blob([new Uint8Array(buf, 2 + n)], {type: "image/jpeg"}));
  const old = p.url;
  p.url = url;
  img.onload = () => { if (old) URL.revokeObjectURL(old); };
  img.src = url;
  img.dataset.tNs = meta.t_ns;
  img.dataset.seq = meta.seq;
  p.root.querySelector(".meta").textContent =
    `${meta.width}×${meta.height} · frame ${meta.seq} · ${fmtTime(meta.t_ns)}`;
}

function showAudio(p, a) {
  if (!a || a.level_db === null) return;
  const pct = Math.max(0, Math.min(100, (a.level_db + 60) / 60 * 100));
  p.root.querySelector(".level .bar").style.width = `${pct}%`;
  p.root.querySelector(".db").textContent = `${a.level_db.toFixed(1)} dBFS · ${a.samplerate} Hz`;
  const c = p.root.querySelector(".wave");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = "#3fb950";
  const w = c.width / Math.max(1, Math.round(a.span_s * 50));
  const x0 = c.width - a.wave.length * w;
  a.wave.forEach(([lo, hi], i) => {
    const y0 = (1 - Math.min(1, hi)) * c.height / 2, y1 = (1 - Math.max(-1, lo)) * c.height / 2;
    g.fillRect(x0 + i * w, y0, Math.max(1, w - 0.5), Math.max(1, y1 - y0));
  });
}

function showText(p, msgs) {
  const ul = p.root.querySelector(".messages");
  ul.replaceChildren(...msgs.slice().reverse().map(m => {
    const li = document.createElement("li");
    const t = document.createElement("span");
    t.textContent = fmtTime(m.t_ns);
    li.append(t, m.text);
    return li;
  }));
}

function showClass(p, v) {
  const c = v && v.current;
  if (!c) return;
  const label = p.root.querySelector(".label");
  label.textContent = c.label;
  label.style.color = colour(c.label);
  label.dataset.tEndNs = c.t_end_ns;
  p.root.querySelector(".scores").replaceChildren(...c.scores.map(([name, s]) => {
    const row = document.createElement("div");
    row.className = "score";
    const bar = document.createElement("div");
    bar.className = "b";
    bar.style.width = `${(s * 100).toFixed(1)}%`;
    bar.style.background = colour(name);
    const track = document.createElement("div");
    track.append(bar);
    row.append(name, track, s.toFixed(3));
    return row;
  }));
  const present = Object.entries(c.present || {}).filter(([, on]) => on).map(([k]) => k).join(" + ");
  const lat = (c.latency_ms || {}).total;
  const truth = v.truth ? ` · truth ${v.truth.label}` : "";
  p.root.querySelector(".info").textContent =
    `${present || "nothing"} present · latency ${lat === undefined ? "?" : lat.toFixed(1)} ms · ` +
    `window ${fmtTime(c.t_start_ns)}–${fmtTime(c.t_end_ns)}${truth}`;
}

function showTimeline(p, tl) {
  if (tl.reset) p.timeline = [];
  p.timeline.push(...tl.add);
  const newest = Math.max(...p.timeline.map(e => e[1]));
  p.timeline = p.timeline.filter(e => e[1] >= newest - TIMELINE_NS);
  const c = p.root.querySelector(".timeline");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const from = newest - TIMELINE_NS;
  for (const [t0, t1, label] of p.timeline) {
    g.fillStyle = colour(label);
    const x0 = (Math.max(t0, from) - from) / TIMELINE_NS * c.width;
    g.fillRect(x0, 0, Math.max(1, (t1 - Math.max(t0, from)) / TIMELINE_NS * c.width), c.height);
  }
  c.dataset.entries = p.timeline.length;
  p.root.querySelector(".axis .from").textContent = p.timeline.length ? fmtTime(from) : "";
}

function remove(source) {
  const p = panels.get(source);
  if (!p) return;
  p.root.remove();
  if (p.url) URL.revokeObjectURL(p.url);
  panels.delete(source);
}

function update(msg) {
  // Sources the console evicted to make room for new ones (it keeps a bounded number).
  for (const source of msg.gone || []) remove(source);
  const hidden = document.getElementById("hidden");
  if (msg.hidden) {
    hidden.textContent = `${msg.hidden} more source${msg.hidden === 1 ? "" : "s"} not shown: ` +
      "every panel is a configured source or one heard within the last minute";
    hidden.hidden = false;
  }
  for (const [source, u] of Object.entries(msg.sources)) {
    const p = panel(source);
    if ("audio" in u) showAudio(p, u.audio);
    if ("text" in u) showText(p, u.text || []);
    if ("class" in u) showClass(p, u.class);
    if (u.timeline) showTimeline(p, u.timeline);
  }
}

function connect() {
  const conn = document.getElementById("conn");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { conn.textContent = "live"; conn.className = "conn ok"; };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.t === "update") update(msg);
    } else {
      showFrame(ev.data);
    }
    ws.send("a");
  };
  ws.onclose = () => {
    conn.textContent = "disconnected; retrying…";
    conn.className = "conn bad";
    setTimeout(connect, 1000);
  };
}

connect();
