// raftsmith ui: plain JS, no framework. Every value from the server (answers, document text,
// file names) is put into the page as text (textContent / text nodes), never parsed as HTML.
"use strict";

const csrf = document.querySelector('meta[name="raftsmith-csrf"]').content;
let bearer = sessionStorage.getItem("raftsmith-token") || "";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function headers(json) {
  const h = {};
  if (bearer) h["Authorization"] = "Bearer " + bearer;
  if (json) { h["Content-Type"] = "application/json"; h["X-Raftsmith-Csrf"] = csrf; }
  return h;
}

async function checked(resp) {
  if (resp.status === 401) { document.getElementById("token-form").hidden = false; }
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try { const e = (await resp.json()).error; msg = (e && (e.message || e)) || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

async function getJSON(url) { return (await checked(await fetch(url, { headers: headers(false) }))).json(); }

async function postJSON(url, body) {
  return checked(await fetch(url, { method: "POST", headers: headers(true), body: JSON.stringify(body) }));
}

// Read an NDJSON stream, calling onEvent for each line as it arrives.
async function stream(url, body, onEvent) {
  const resp = await postJSON(url, body);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
      if (line.trim()) onEvent(JSON.parse(line));
    }
  }
}

// --- the current choice -------------------------------------------------------------------
function choice() {
  return { model: document.querySelector('input[name="model"]:checked').value, rag: document.getElementById("rag").checked };
}

function choiceText(model, rag) { return model + (rag ? " · with RAG" : " · no RAG"); }

async function switchChoice() {
  showError("");
  try {
    const r = await (await postJSON("/api/switch", choice())).json();
    document.getElementById("choice-label").textContent = choiceText(r.label, r.rag);
  } catch (e) { showError(e.message); }
}

// --- answers and citations ----------------------------------------------------------------
function citeButton(ref) {
  return el("button", { type: "button", class: "cite", "data-chunk": ref.chunk_id, title: ref.location,
                        onclick: () => openChunk(ref.chunk_id) }, "[" + ref.n + "]");
}

// The answer with each [n] that names a cited chunk turned into a button.
function renderAnswer(target, result) {
  target.replaceChildren();
  const byN = new Map(result.citations.map((c) => [String(c.n), c]));
  const text = result.raw || result.answer || "";
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const ref = byN.get(m[1]);
    if (!ref) continue;
    target.append(document.createTextNode(text.slice(last, m.index)), citeButton(ref));
    last = m.index + m[0].length;
  }
  target.append(document.createTextNode(text.slice(last)));
}

// The passages that went into the prompt, numbered as the model saw them ([n] in its reply).
function renderSources(result) {
  const box = el("div", { class: "sources-box" });
  if (result.refused || (result.rag && result.retrieved.length === 0)) {
    box.append(el("span", { class: "no-sources", text: "No sources found: nothing in the indexed documents matches this question." }));
    return box;
  }
  if (!result.rag) { box.append(el("span", { class: "meta", text: "Closed book: no documents were used." })); return box; }
  const cited = new Set(result.citations.map((c) => c.chunk_id));
  if (cited.size === 0) box.append(el("span", { class: "no-sources", text: "The answer cites no source; the passages it was given:" }));
  else box.append(el("div", { class: "meta", text: "Sources (cited ones marked):" }));
  const list = el("ol", { class: "sources" });
  for (const c of result.retrieved) {
    const item = el("li", { class: cited.has(c.chunk_id) ? "cited" : "" }, citeButton(c), " ",
                    c.location + (c.heading ? " (" + c.heading + ")" : ""));
    if (cited.has(c.chunk_id)) item.append(el("strong", { text: " cited" }));
    list.append(item);
  }
  box.append(list);
  return box;
}

function renderMeta(result) {
  const secs = (result.latency_ms / 1000).toFixed(1);
  return el("div", { class: "meta answer-meta", text: choiceText(result.model, result.rag) + " · " + result.backend +
    " · " + secs + " s · audit #" + result.audit_seq });
}

async function ask(ev) {
  ev.preventDefault();
  const q = document.getElementById("question");
  const question = q.value.trim();
  if (!question) return;
  showError("");
  const list = document.getElementById("messages");
  list.append(el("li", { class: "user", text: question }));
  const text = el("div", { class: "answer-text" });
  const item = el("li", { class: "answer" }, text);
  list.append(item);
  q.value = "";
  const button = document.getElementById("ask");
  button.disabled = true;
  try {
    await stream("/api/ask", { question, ...choice() }, (e) => {
      if (e.type === "token") text.append(document.createTextNode(e.text));
      else if (e.type === "done") { renderAnswer(text, e.result); item.append(renderSources(e.result), renderMeta(e.result)); item.dataset.done = "1"; }
      else if (e.type === "error") { item.append(el("div", { class: "error", text: e.message })); item.dataset.done = "1"; }
    });
  } catch (e) { showError(e.message); item.dataset.done = "1"; }
  button.disabled = false;
}

async function openChunk(id) {
  showError("");
  try {
    const c = await getJSON("/api/chunk/" + encodeURIComponent(id));
    document.getElementById("chunk-source").textContent = c.location;
    document.getElementById("chunk-heading").textContent = c.heading || "";
    document.getElementById("chunk-note").textContent = c.file_note || ("lines " + c.start_line + "-" + c.end_line + " of " + c.source);
    const lines = document.getElementById("chunk-lines");
    lines.textContent = c.file_lines ? c.file_lines.map(([n, t]) => String(n).padStart(5) + "  " + t).join("\n") : c.text;
    document.getElementById("chunk-text").textContent = c.text;
    document.getElementById("chunk-panel").hidden = false;
  } catch (e) { showError(e.message); }
}

// --- arena --------------------------------------------------------------------------------
let arenaId = null;

async function runArena(ev) {
  ev.preventDefault();
  const question = document.getElementById("arena-question").value.trim();
  if (!question) return;
  showError("");
  arenaId = null;
  document.getElementById("arena-marks").hidden = true;
  document.getElementById("arena-recorded").hidden = true;
  const bodies = {};
  for (const side of ["base", "tuned"]) {
    const body = document.querySelector("#arena-" + side + " .body");
    body.replaceChildren(el("div", { class: "answer-text" }));
    bodies[side] = body;
  }
  document.getElementById("arena-run").disabled = true;
  try {
    await stream("/api/arena", { question, rag: document.getElementById("rag").checked }, (e) => {
      const body = bodies[e.side];
      if (e.type === "token") body.firstChild.append(document.createTextNode(e.text));
      else if (e.type === "done") { renderAnswer(body.firstChild, e.result); body.append(renderSources(e.result), renderMeta(e.result)); }
      else if (e.type === "error") showError(e.message);
      else if (e.type === "arena") { arenaId = e.arena_id; document.getElementById("arena-marks").hidden = false; }
    });
  } catch (e) { showError(e.message); }
  document.getElementById("arena-run").disabled = false;
}

async function mark(ev) {
  if (!arenaId) return;
  try {
    const r = await (await postJSON("/api/arena/mark", { arena_id: arenaId, choice: ev.target.dataset.choice })).json();
    arenaId = null;
    document.getElementById("arena-marks").hidden = true;
    const done = document.getElementById("arena-recorded");
    done.textContent = "Recorded: " + r.recorded + " (in " + r.path + ")";
    done.hidden = false;
  } catch (e) { showError(e.message); }
}

// --- status and report --------------------------------------------------------------------
function row(dl, term, value, ok) {
  const dd = el("dd", { text: value });
  if (ok !== undefined) dd.className = ok ? "ok" : "bad";
  dl.append(el("dt", { text: term }), dd);
  return dd;
}

async function loadStatus() {
  const dl = document.getElementById("status");
  dl.replaceChildren(el("dd", { text: "checking (sha256 of the model files)..." }));
  try {
    const s = await getJSON("/api/status");
    dl.replaceChildren();
    row(dl, "Workspace", s.workspace);
    row(dl, "Bundle", s.bundle ? (s.bundle.problem || ((s.bundle.export_name || "?") + ", created " + s.bundle.created_at)) : "not installed from a bundle");
    row(dl, "Export", s.export ? s.export.name + " (" + (s.export.base_model || "?") + "), manifest " + s.export.manifest : "no export: only the base model can answer");
    for (const f of s.files) {
      row(dl, "  " + f.role, f.path + ": " + (f.verified === null ? "no sha256 in the manifest" : f.verified ? "sha256 verified" : "NOT verified: " + f.problem), f.verified !== false).dataset.file = f.path;
    }
    row(dl, "Index", s.index.ok ? s.index.chunks + " chunks from " + s.index.documents + " documents, " + (s.index.bytes / 1048576).toFixed(1) + " MiB" : s.index.problem, s.index.ok);
    const audit = row(dl, "Audit log", (s.audit.ok ? "verified: " : "FAILED: ") + s.audit.summary, s.audit.ok);
    audit.id = "status-audit";
    audit.dataset.records = s.audit.records;
    row(dl, "Current choice", choiceText(s.choice.model, s.choice.rag));
  } catch (e) { dl.replaceChildren(); showError(e.message); }
}

async function loadReport() {
  try {
    const r = await getJSON("/api/report");
    const table = document.getElementById("report-table");
    table.replaceChildren();
    document.getElementById("report-meta").textContent = r.found ? "Latest eval: " + r.name + " (" + (r.corpus || "") + ", " + (r.created_at || "") + ")" : r.hint;
    if (r.found) {
      table.append(el("tr", {}, ...r.header.map((h) => el("th", { text: h }))));
      for (const cells of r.rows) table.append(el("tr", {}, ...cells.map((c) => el("td", { text: c }))));
    }
    document.getElementById("report-preferences").textContent = r.preferences ? r.preferences.line : "No arena marks yet.";
    const img = document.getElementById("report-chart");
    img.hidden = !(r.found && r.chart);
    if (r.found && r.chart) img.src = "/api/report/chart.png?" + encodeURIComponent(r.name);
  } catch (e) { showError(e.message); }
}

// --- wiring -------------------------------------------------------------------------------
function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.dataset.view === view));
  for (const sec of document.querySelectorAll(".view")) sec.hidden = sec.id !== "view-" + view;
  if (view === "status") loadStatus();
  if (view === "report") loadReport();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  for (const input of document.querySelectorAll('#choice input')) input.addEventListener("change", switchChoice);
  document.getElementById("ask-form").addEventListener("submit", ask);
  document.getElementById("arena-form").addEventListener("submit", runArena);
  for (const b of document.querySelectorAll(".mark")) b.addEventListener("click", mark);
  document.getElementById("chunk-close").addEventListener("click", () => { document.getElementById("chunk-panel").hidden = true; });
  document.getElementById("token-entry").addEventListener("submit", (ev) => {
    ev.preventDefault();
    bearer = document.getElementById("token-input").value;
    sessionStorage.setItem("raftsmith-token", bearer);
    document.getElementById("token-form").hidden = true;
  });
  document.getElementById("choice-label").textContent = choiceText(document.body.dataset.model, document.body.dataset.rag === "true");
  document.body.dataset.ready = "1";
});
