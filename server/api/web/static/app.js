// kvserve's web page: plain JS, no build step. Reads /ui/api/*, classifies through kvd.
"use strict";

const $ = (selector) => document.querySelector(selector);
const BASELINES = { "keras": "Keras predict()", "keras-call": "Keras model(x)", "tf": "tf.function" };

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// kvd with --auth-token-file: the page asks for a token once, keeps it for this tab only (sessionStorage) and
// sends it as "Authorization: Bearer" with every data call; a 401 asks again.
const TOKEN_KEY = "kvserve-token";

class NeedsToken extends Error {}

function askForToken(message) {
  $("#token-form").hidden = false;
  $("#token-message").textContent = message;
  $("#token").focus();
}

async function getJSON(url, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { ...(options.headers || {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  const response = await fetch(url, { ...options, headers });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (response.status === 401) {
    askForToken(body.error || "kvd requires a token");
    throw new NeedsToken(body.error || "kvd requires a token");
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function useToken(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  $("#token-form").hidden = true;
  refresh();
}

function shownState(model, version) {
  // an older version next to a READY newer one is just stored: not a fault
  if (version.state === "READY" || version.state === "LOADING") return version.state;
  const newerReady = model.versions.some((v) => v.state === "READY" && Number(v.version) > Number(version.version));
  return newerReady && !/fail|error|damaged|cannot/i.test(version.reason) ? "stored" : version.state;
}

function parityText(parity) {
  if (!parity) return ["none", ""];
  const agreement = parity.top1_agreement === null || parity.top1_agreement === undefined ? "" :
    `, top-1 ${(100 * parity.top1_agreement).toFixed(1)}%`;
  return [`${parity.passed ? "passed" : "FAILED"}: max rel diff ${Number(parity.max_rel_diff).toPrecision(2)} ` +
          `(≤ ${parity.tolerance_max_rel_diff})${agreement}`, parity.passed ? "parity-passed" : "parity-failed"];
}

async function loadModels() {
  const { models } = await getJSON("/ui/api/models");
  const body = $("#models tbody");
  body.innerHTML = "";
  const select = $("#try-model");
  const chosen = select.value;
  select.innerHTML = "";
  if (!models.length) {
    const row = body.insertRow();
    const td = cell(row, "No models yet: kvctl upload MODEL.keras --name NAME", "muted");
    td.colSpan = 7;
  }
  for (const model of models) {
    for (const version of model.versions) {
      const row = body.insertRow();
      row.dataset.model = model.name;
      cell(row, model.name);
      cell(row, version.version);
      const state = shownState(model, version);
      cell(row, state, `state-${state}`).title = version.reason;
      cell(row, version.device || "-");
      cell(row, version.precision || "-");
      const [text, className] = parityText(version.parity);
      cell(row, text, className);
      cell(row, version.labels ? String(version.labels) : "-");
    }
    if (model.versions.some((v) => v.state === "READY")) select.add(new Option(model.name, model.name));
  }
  if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
  await loadBenchmark();
}

async function loadSystem() {
  const system = await getJSON("/ui/api/system");
  $("#server-version").textContent = `kvd ${system.version}`;
  const devices = $("#devices tbody");
  devices.innerHTML = "";
  for (const device of system.devices) {
    const row = devices.insertRow();
    cell(row, device.name);
    cell(row, device.available ? "yes" : "no", device.available ? "parity-passed" : "muted");
    cell(row, device.full_name || device.reason, "wrap");
    cell(row, (device.precisions || []).join(", "));
  }
  const plugins = $("#plugins tbody");
  plugins.innerHTML = "";
  for (const plugin of system.plugins) {
    const row = plugins.insertRow();
    cell(row, plugin.name, "wrap");
    cell(row, plugin.version || "");
    cell(row, (plugin.hooks || []).join(", "));
    cell(row, plugin.builtin ? "built-in" : (plugin.error ? `failed: ${plugin.error}` : ""), plugin.error ? "parity-failed" : "");
  }
}

function showResults(answer) {
  const result = $("#try-result");
  result.innerHTML = "";
  const heading = document.createElement("div");
  heading.className = "muted";
  heading.textContent = `${answer.model} v${answer.version}, ${answer.input}`;
  result.append(heading);
  answer.results.forEach((row, index) => {
    const grid = document.createElement("div");
    grid.className = "top";
    grid.dataset.row = String(index);
    row.forEach((top, rank) => {
      const label = document.createElement("div");
      label.className = rank === 0 ? "label first" : "label";
      label.textContent = top.label ?? String(top.index);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, 100 * top.score)}%`;
      const score = document.createElement("div");
      score.textContent = `${(100 * top.score).toFixed(1)}%`;
      grid.append(label, bar, score);
    });
    result.append(grid);
  });
}

async function classify(event) {
  event.preventDefault();
  const file = $("#try-file").files[0];
  const result = $("#try-result");
  if (!file) { result.innerHTML = '<div class="error">Choose an image or a .npy file first.</div>'; return; }
  const model = $("#try-model").value;
  if (!model) { result.innerHTML = '<div class="error">No model is ready to try.</div>'; return; }
  result.innerHTML = '<div class="muted">classifying…</div>';
  try {
    const k = encodeURIComponent($("#try-k").value || "3");
    const answer = await getJSON(`/ui/api/models/${encodeURIComponent(model)}/classify?k=${k}`,
      { method: "POST", body: await file.arrayBuffer(), headers: { "Content-Type": "application/octet-stream" } });
    showResults(answer);
  } catch (error) {
    result.innerHTML = "";
    const line = document.createElement("div");
    line.className = "error";
    line.textContent = error.message;
    result.append(line);
  }
}

function preview() {
  const file = $("#try-file").files[0];
  const box = $("#try-preview");
  box.innerHTML = "";
  if (file && file.type.startsWith("image/")) {
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    box.append(img);
  }
}

function fmtMs(ms) { return ms < 1 ? `${ms.toFixed(3)} ms` : ms < 100 ? `${ms.toFixed(2)} ms` : `${ms.toFixed(0)} ms`; }

async function loadBenchmark() {
  const model = $("#try-model").value;
  const box = $("#benchmark");
  box.innerHTML = "";
  if (!model) return;
  let report;
  try { report = await getJSON(`/ui/api/models/${encodeURIComponent(model)}/benchmark`); } catch { return; }
  const rows = report.results;
  const medians = rows.map((r) => r.p50_s * 1000);
  const lo = Math.log10(Math.min(...medians) / 2), hi = Math.log10(Math.max(...medians) * 1.5);
  const base = Object.fromEntries(rows.filter((r) => r.backend in BASELINES).map((r) => [r.backend, r.p50_s]));
  const title = document.createElement("div");
  title.innerHTML = `<strong></strong><div class="muted"></div>`;
  title.querySelector("strong").textContent = `${report.name} v${report.version}: median latency per call (log scale)`;
  title.querySelector(".muted").textContent =
    `${report.iterations} timed iterations per row, measured in-process on the server, ${report.finished}; ${report.input}`;
  box.append(title);
  const grid = document.createElement("div");
  grid.className = "bench";
  rows.forEach((row, i) => {
    const name = document.createElement("div");
    name.textContent = BASELINES[row.backend] || `OpenVINO ${row.backend} ${row.precision}`;
    const bar = document.createElement("div");
    bar.className = `bar ${row.backend in BASELINES ? "baseline" : "openvino"}`;
    bar.style.width = `${Math.max(1, 60 * (Math.log10(medians[i]) - lo) / (hi - lo))}%`;
    const value = document.createElement("span");
    const speedups = row.backend in BASELINES ? [] :
      Object.entries(base).map(([b, p50]) => `${(p50 / row.p50_s).toFixed(p50 / row.p50_s < 10 ? 1 : 0)}x vs ${BASELINES[b]}`);
    value.textContent = fmtMs(medians[i]);
    bar.append(value);
    grid.append(name, bar);
    if (speedups.length) {
      const line = document.createElement("div");
      line.className = "speedups";
      line.textContent = speedups.join(" · ");
      grid.append(line);
    }
  });
  box.append(grid);
  $("#benchmark-hint").hidden = true;
}

async function refresh() {
  await Promise.all([loadModels(), loadSystem()]).catch((error) => {
    $("#models tbody").innerHTML = "";
    const row = $("#models tbody").insertRow();
    const text = error instanceof NeedsToken ? `${error.message}: enter a token above` : `cannot read kvd: ${error.message}`;
    const td = cell(row, text, "error");
    td.colSpan = 7;
  });
}

$("#refresh").addEventListener("click", refresh);
$("#token-form").addEventListener("submit", useToken);
$("#try-form").addEventListener("submit", classify);
$("#try-file").addEventListener("change", preview);
$("#try-model").addEventListener("change", loadBenchmark);
refresh();
