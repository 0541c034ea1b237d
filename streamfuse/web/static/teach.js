// The Teach page: hold to label a source now, train from recordings, shadow, promote, roll back.
"use strict";

const $ = id => document.getElementById(id);
const WINDOW_NS = 180e9;
let holding = false;
let pressedAt = 0;

async function call(method, url, body) {
  const opt = {method, headers: {"Content-Type": "application/json"}};
  if (body !== undefined) opt.body = JSON.stringify(body);
  const r = await fetch(url, opt);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function start() {
  if (holding) return;
  holding = true;
  pressedAt = performance.now();
  $("hold").classList.add("on");
  try {
    const body = {source: $("source").value, label: $("label").value, action: "start"};
    await call("POST", "/api/label", body);
    $("label-status").textContent = `labelling ${$("source").value} as "${$("label").value}"…`;
  } catch (e) {
    holding = false;
    $("hold").classList.remove("on");
    $("label-status").textContent = `not labelled: ${e.message}`;
  }
}

async function stop() {
  if (!holding) return;
  holding = false;
  $("hold").classList.remove("on");
  try {
    const held = performance.now() - pressedAt;
    await call("POST", "/api/label", {source: $("source").value, action: "stop", held_ms: held});
    $("label-status").textContent = `labelled ${$("source").value} as "${$("label").value}"`;
  } catch (e) {
    $("label-status").textContent = `stop failed: ${e.message}`;
  }
}

function colour(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 45%)`;
}

async function drawSpans() {
  const source = $("source").value;
  if (!source) return;
  const data = await call("GET", `/api/labels?source=${encodeURIComponent(source)}`);
  const cv = $("spans"), g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const x = t => (1 - (data.now_ns - t) / WINDOW_NS) * cv.width;
  const known = new Set();
  for (const s of data.spans) {
    const x0 = Math.max(0, x(s.start_ns)), x1 = x(s.end_ns === null ? data.now_ns : s.end_ns);
    g.fillStyle = colour(s.label);
    g.fillRect(x0, 2, Math.max(1, x1 - x0), cv.height - 4);
    g.fillStyle = "#fff";
    g.fillText(s.label, x0 + 3, 18);
    known.add(s.label);
  }
  cv.dataset.spans = JSON.stringify(data.spans);
  const list = $("known");
  for (const l of known) {
    if (![...list.options].some(o => o.value === l)) list.append(new Option(l, l));
  }
}

async function loadSources() {
  const h = await call("GET", "/api/health");
  const sel = $("source");
  for (const s of h.sources || []) {
    if (![...sel.options].some(o => o.value === s)) sel.append(new Option(s, s));
  }
}

async function loadRecordings() {
  const data = await call("GET", "/api/recordings");
  const body = document.querySelector("#recs tbody");
  const checked = new Set([...body.querySelectorAll("input:checked")].map(i => i.value));
  body.replaceChildren(...data.files.map(f => {
    const tr = document.createElement("tr");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = f.name;
    box.checked = checked.has(f.name);
    const start = f.start_ns === null ? "–"
      : new Date(f.start_ns / 1e6).toISOString().slice(0, 19);
    const dur = f.duration_s === null ? "–" : `${f.duration_s.toFixed(1)} s`;
    const cells = [box, f.name, start, dur,
                   f.complete ? f.streams.join(", ") : "(being written)"];
    for (const c of cells) {
      const td = document.createElement("td");
      td.append(c);
      tr.append(td);
    }
    return tr;
  }));
}

let lastJob = null;

async function loadJob() {
  const j = await call("GET", "/api/train");
  lastJob = j;
  $("job").textContent = j.state === "idle" ? "no training job" :
    `${j.state}: ${j.error || j.progress.join(" ")}`;
  $("report").textContent = j.report ? JSON.stringify(j.report, null, 1) : "";
}

async function loadModels() {
  const m = await call("GET", "/api/models");
  $("models").textContent = `live ${m.live || "none"} · previous ${m.previous || "none"} · ` +
    `shadow ${m.shadow || "none"}`;
}

async function act(body) {
  try {
    await call("POST", "/api/models", body);
    $("model-status").textContent = `${body.action}: done`;
  } catch (e) {
    $("model-status").textContent = `${body.action}: ${e.message}`;
  }
  loadModels();
}

$("hold").addEventListener("pointerdown", start);
for (const ev of ["pointerup", "pointerleave", "pointercancel"]) {
  $("hold").addEventListener(ev, stop);
}
document.addEventListener("keydown", e => {
  if (e.code === "Space" && !e.repeat && e.target.tagName !== "INPUT") {
    e.preventDefault();
    start();
  }
});
document.addEventListener("keyup", e => { if (e.code === "Space") stop(); });
$("train").addEventListener("click", async () => {
  const recordings = [...document.querySelectorAll("#recs input:checked")].map(i => i.value);
  try {
    await call("POST", "/api/train", {recordings, epochs: Number($("epochs").value)});
  } catch (e) {
    $("job").textContent = `not started: ${e.message}`;
    return;
  }
  loadJob();
});
$("cancel").addEventListener("click", () => call("DELETE", "/api/train").then(loadJob, () => {}));
$("as-shadow").addEventListener("click",
                                () => act({action: "shadow", dir: lastJob && lastJob.dir}));
$("promote").addEventListener("click", () => act({action: "promote"}));
$("rollback").addEventListener("click", () => act({action: "rollback"}));
$("source").addEventListener("change", drawSpans);

async function tick() {
  try {
    await loadSources();
    await drawSpans();
    $("conn").textContent = "connected";
    $("conn").className = "conn ok";
  } catch (e) {
    $("conn").textContent = "disconnected";
    $("conn").className = "conn bad";
  }
}

tick();
loadRecordings();
loadJob();
loadModels();
setInterval(tick, 500);
setInterval(() => { loadRecordings(); loadJob(); loadModels(); }, 2000);
