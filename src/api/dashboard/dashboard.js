// Gantry's dashboard: reads /api/optimized/stats every second and draws
// it. No framework, no build step, nothing from a CDN: the server embeds
// this file. Text from the server goes in with textContent only.
"use strict";

const HISTORY = 60; // seconds of request rate kept for each sparkline
const history = new Map(); // model -> [answers a second, ...]
const answered = new Map(); // model -> [answers since start, when (ms)] at the last poll

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function fixed(value, digits) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

function count(value) {
  return value === null || value === undefined ? "–" : Math.round(value).toLocaleString("en-US");
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function number(label, value, field, extraClass = "") {
  return el("div", {}, el("span", {}, label), el("b", { "data-field": field, class: extraClass }, value));
}

function sparkline(values) {
  const width = 120, height = 40;
  const top = Math.max(1, ...values);
  const spark = svg("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-hidden": "true" });
  // The newest at the right edge, one step a second.
  const points = values.map((v, i) => {
    const x = width - ((values.length - 1 - i) / (HISTORY - 1)) * width;
    return `${x.toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`;
  });
  spark.append(svg("polyline", { points: points.join(" ") }));
  return spark;
}

function batchFill(fill, cap) {
  const sizes = Object.keys(fill || {}).map(Number);
  const largest = Math.max(cap || 1, ...sizes, 1);
  const most = Math.max(1, ...Object.values(fill || {}));
  const bars = el("div", { class: "fill", "data-field": "batch-fill", role: "img",
    "aria-label": `batches by size: ${JSON.stringify(fill || {})}` });
  for (let size = 1; size <= largest; size++) {
    const n = (fill || {})[String(size)] || 0;
    const bar = el("div", { title: `${n} batches of ${size}` });
    bar.style.height = `${(n / most) * 100}%`;
    bars.append(bar);
  }
  return [bars, el("div", { class: "fill-axis" }, el("span", {}, "1"), el("span", {}, `${largest} items`))];
}

function modelCard(name, pool, perf) {
  const statuses = perf.statuses || {};
  const ready = pool.ready;
  const rate = perf.request_rate_per_s || 0;
  const rates = history.get(name) || [];
  const latency = perf.latency_ms || {};
  const batcher = pool.batcher || {};
  const slo = perf.latency_target;
  const replicas = el("div", { class: "replicas", "data-field": "replicas" });
  for (const r of pool.replicas || []) {
    const text = `#${r.id} ${r.state}${r.device ? " · " + r.device : ""} · ${r.inflight} in flight`;
    replicas.append(el("span", { class: `replica ${r.state}`, title: r.reason || "" }, text));
  }
  return el("article", { class: "card", "data-model": name },
    el("div", { class: "card-head" },
      el("h3", {}, name),
      el("span", { class: `badge ${ready ? "ok" : "bad"}`, "data-field": "ready" }, ready ? "ready" : "not ready")),
    el("div", { class: "numbers" },
      number("req/s (60 s)", fixed(rate, 1), "rate"),
      number("p50 ms", fixed(latency.p50, 2), "p50"),
      number("p99 ms", fixed(latency.p99, 2), "p99"),
      number("queue", count(batcher.queue_depth), "queue"),
      number("429s", count(statuses["429"] || 0), "r429", statuses["429"] ? "bad-count" : ""),
      number("504s", count(statuses["504"] || 0), "r504", statuses["504"] ? "bad-count" : ""),
      number("requests (60 s)", count(perf.requests || 0), "requests"),
      number("avg batch", fixed(batcher.avg_batch_size, 2), "avg-batch"),
      number("batch cap", count(batcher.max_batch_size), "batch-cap"),
      ...(slo ? [
        number(`within ${slo.target_ms} ms (60 s)`,
          slo.attainment == null ? "–" : `${fixed(slo.attainment * 100, 1)}%`, "attainment",
          slo.attainment != null && slo.attainment < 0.99 ? "bad-count" : ""),
        number("goodput/s", fixed(slo.goodput_per_s, 1), "goodput"),
        number("refused early", count((batcher.latency || {}).refused_early || 0), "refused-early"),
      ] : [])),
    el("div", { class: "label" }, "answers a second, the last minute"),
    sparkline(rates),
    el("div", { class: "label" }, "Batches by size"),
    ...batchFill(batcher.batch_fill, batcher.max_batch_size),
    el("div", { class: "label" }, "Replicas"),
    replicas);
}

function deviceCard(d) {
  const used = d.total_mb ? (d.reserved_mb / d.total_mb) * 100 : 0;
  const bar = el("div", { class: "bar" }, el("div"));
  bar.firstChild.style.width = `${Math.min(100, used).toFixed(1)}%`;
  const gpu = d.used_mb !== undefined && d.used_mb !== null
    ? el("div", { class: "muted" }, `GPU memory used ${count(d.used_mb)} MB · utilization ${fixed(d.utilization_percent, 0)}%`)
    : "";
  return el("article", { class: "card", "data-device": d.device },
    el("div", { class: "card-head" }, el("h3", {}, d.name ? `${d.device} · ${d.name}` : d.device)),
    bar,
    el("div", { class: "muted", "data-field": "budget" },
      `${count(d.reserved_mb)} MB reserved of ${count(d.total_mb)} MB · ${count(d.free_mb)} MB free`),
    gpu);
}

function cacheText(cache) {
  if (!cache) return "off";
  const parts = [`hit rate ${fixed((cache.hit_rate || 0) * 100, 1)}%`];
  if (cache.l1) parts.push(`L1 ${count(cache.l1.entries)} entries, ${count(cache.l1.hits)} hits`);
  parts.push(cache.l2 ? `Redis ${cache.l2.status}, ${count(cache.l2.hits)} hits` : "no Redis");
  if (cache.coalesced) parts.push(`${count(cache.coalesced)} coalesced`);
  return parts.join(" · ");
}

function render(stats) {
  const models = stats.model_pools || {};
  const perf = (stats.performance_metrics || {}).models || {};
  const names = Object.keys(models).sort();
  // The sparkline: answers a second between two polls (all statuses).
  const now = performance.now();
  for (const name of names) {
    const total = Object.values((perf[name] || {}).statuses || {}).reduce((a, b) => a + b, 0);
    const last = answered.get(name);
    answered.set(name, [total, now]);
    if (!last || now <= last[1]) continue;
    const rates = history.get(name) || [];
    rates.push(Math.max(0, total - last[0]) / ((now - last[1]) / 1000));
    if (rates.length > HISTORY) rates.shift();
    history.set(name, rates);
  }
  document.getElementById("uptime").textContent = duration(stats.uptime_s || 0);
  const totals = stats.performance_metrics || {};
  document.getElementById("requests-total").textContent = count(totals.requests_total);
  document.getElementById("errors-total").textContent = count(totals.errors_total);
  const allReady = names.length > 0 && names.every((n) => models[n].ready);
  const status = document.getElementById("status");
  status.textContent = allReady ? "all models ready" : "not all models ready";
  status.className = `badge ${allReady ? "ok" : "warn"}`;
  document.getElementById("devices").replaceChildren(...((stats.memory || {}).devices || []).map(deviceCard));
  document.getElementById("cache").textContent = cacheText(stats.cache);
  document.getElementById("models").replaceChildren(
    ...names.map((n) => modelCard(n, models[n], perf[n] || {})));
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("/api/optimized/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`stats answered ${response.status}`);
    render(await response.json());
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot read the stats: ${e.message}`;
    error.hidden = false;
    const status = document.getElementById("status");
    status.textContent = "unreachable";
    status.className = "badge bad";
  }
}

refresh();
setInterval(refresh, 1000);
