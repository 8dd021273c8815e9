// Nissa: a run live and after the fact, from the REST API (every call carries the bearer token).
"use strict";

const COLORS = {DORMANT: "#ddd", GERMINATED: "#9cf", LOADING: "#69c", TRAINING: "#36c", GRAFTING: "#c6f",
  STABILIZATION: "#96c", EVALUATING: "#f93", FINE_TUNING: "#fc3", FOSSILIZED: "#3a3", CULLED: "#c33",
  CANCELLED: "#999", ROLLED_BACK: "#633", ERROR_RECOVERY: "#f00"};
const SVG = "http://www.w3.org/2000/svg";
let token = null;
let timer = null;

function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("esper-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("esper-token");
}

async function api(path) {
  const resp = await fetch(path, {headers: {Authorization: "Bearer " + token}});
  const body = await resp.json();
  if (!resp.ok) {
    const err = new Error((body.error && body.error.message) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

function chart(epochs) {
  const w = 720, h = 240, pad = 36;
  const svg = el("svg:svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`});
  const maxEpoch = Math.max(1, ...epochs.map(e => e.epoch));
  const maxLoss = Math.max(1e-9, ...epochs.map(e => e.val_loss));
  const x = e => pad + (w - 2 * pad) * e / maxEpoch;
  const line = (key, scale, color, name) => {
    const d = epochs.map((e, i) => `${i ? "L" : "M"}${x(e.epoch).toFixed(1)},${(h - pad - (h - 2 * pad) * e[key] / scale).toFixed(1)}`).join("");
    svg.appendChild(el("svg:path", {d, fill: "none", stroke: color, "stroke-width": 2, "data-series": name}));
  };
  line("val_accuracy", 1, "#36c", "val_accuracy");
  line("val_loss", maxLoss, "#c63", "val_loss");
  svg.appendChild(el("svg:text", {x: pad, y: 16, fill: "#36c"}, "val accuracy (0–1)"));
  svg.appendChild(el("svg:text", {x: pad + 180, y: 16, fill: "#c63"}, `val loss (0–${maxLoss.toFixed(3)})`));
  svg.appendChild(el("svg:text", {x: w - pad - 60, y: h - 8}, `epoch ${maxEpoch}`));
  return svg;
}

function timeline(transitions, lastEpoch) {
  const seeds = new Map();
  for (const t of transitions) {
    const key = `seed/${t.layer_id}/${t.seed_id}`;
    if (!seeds.has(key)) seeds.set(key, []);
    seeds.get(key).push(t);
  }
  const w = 720, row = 18, pad = 90;
  const svg = el("svg:svg", {width: w, height: Math.max(row, seeds.size * row) + 4});
  const x = e => pad + (w - pad - 10) * e / Math.max(1, lastEpoch);
  let i = 0;
  for (const [key, ts] of seeds) {
    const g = el("svg:g", {class: "seed-row", "data-seed": key});
    g.appendChild(el("svg:text", {x: 2, y: i * row + 13}, key));
    ts.forEach((t, j) => {
      const end = j + 1 < ts.length ? ts[j + 1].epoch : lastEpoch;
      const rect = el("svg:rect", {x: x(t.epoch), y: i * row + 2, width: Math.max(2, x(end) - x(t.epoch)),
        height: row - 4, fill: COLORS[t.to_state] || "#000", "data-state": t.to_state});
      rect.appendChild(el("svg:title", {}, `${t.to_state} from epoch ${t.epoch}${t.reason ? " (" + t.reason + ")" : ""}`));
      g.appendChild(rect);
    });
    svg.appendChild(g);
    i++;
  }
  return svg;
}

function fill(tbodySelector, rows, cells) {
  const tbody = document.querySelector(tbodySelector);
  tbody.replaceChildren(...rows.map(r => {
    const tr = el("tr");
    for (const c of cells(r)) tr.appendChild(el("td", {}, c));
    return tr;
  }));
}

const num = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v)) ? "" : Number(v).toFixed(d);

async function showRun(runId) {
  const run = await api(`/api/v1/runs/${encodeURIComponent(runId)}`);
  const last = run.epochs.length ? run.epochs[run.epochs.length - 1].epoch : 0;
  document.getElementById("accuracy-chart").replaceChildren(chart(run.epochs));
  document.getElementById("timeline").replaceChildren(timeline(run.transitions, last));
  fill("#reports tbody", run.field_reports, r => [r.seed_id, r.blueprint_id.slice(0, 12), r.outcome,
    num(r.pre_metric), num(r.post_metric), num(r.reward, 2)]);
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren(...(run.alerts.length ? run.alerts.map(a => el("li", {class: a.severity},
    `[${a.severity}] ${a.rule}: ${a.message}`)) : [el("li", {class: "none"}, "no alerts")]));
  const kernels = await api("/api/v1/kernels");
  fill("#kernels tbody", kernels.kernels, k => [k.artifact_id.slice(0, 16), k.blueprint_id.slice(0, 12),
    String(k.chunk_width ?? ""), k.status, k.tags.join(", "), num(k.risk_score, 2), num(k.latency_ms_mean, 3)]);
  const tree = await api("/api/v1/lineage");
  const designs = [...tree.designs].sort((a, b) => a.depth - b.depth || a.name.localeCompare(b.name));
  fill("#lineage tbody", designs, d => [d.name, d.mutation, d.parent_names.join(" × ") || "(none)",
    String(d.depth), `${d.validated} / ${d.kernels}`, d.tags.join(", "), `${d.fossilized} / ${d.germinated}`]);
  const rate = r => r.success_rate === null ? "not grafted" : `${r.fossilized} / ${r.germinated} fossilized`;
  document.getElementById("lineage-summary").textContent = `${tree.karn_designs} Karn designs, ` +
    `${tree.karn_validated} with a validated kernel; in the field: Karn's ${rate(tree.field.karn)}, ` +
    `the others' ${rate(tree.field.others)}`;
  const acc = run.epochs.length ? run.epochs[run.epochs.length - 1].val_accuracy : NaN;
  setStatus(`run ${runId}: ${run.epochs.length} epochs, val accuracy ${num(acc)}, ` +
    `${run.transitions.length} transitions, ${run.field_reports.length} field reports, ${kernels.total} kernels`);
}

async function refresh() {
  const select = document.getElementById("run");
  try {
    const runs = await api("/api/v1/runs");
    const wanted = select.value || new URLSearchParams(location.search).get("run") || (runs[0] && runs[0].run_id);
    select.replaceChildren(...runs.map(r => el("option", {value: r.run_id}, `${r.run_id} (${r.epochs} epochs)`)));
    if (!wanted) { setStatus("no runs in the analytics store yet"); return; }
    select.value = wanted;
    await showRun(wanted);
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
    if (err.status === 401) document.getElementById("login").hidden = false;
  }
}

function start() {
  token = readToken();
  if (!token) { document.getElementById("login").hidden = false; setStatus("a token is needed", true); return; }
  refresh();
  clearInterval(timer);
  timer = setInterval(() => { if (document.getElementById("live").checked) refresh(); }, 5000);
}

document.getElementById("run").addEventListener("change", () => refresh());
document.getElementById("use-token").addEventListener("click", () => {
  sessionStorage.setItem("esper-token", document.getElementById("token").value.trim());
  document.getElementById("login").hidden = true;
  start();
});
start();
