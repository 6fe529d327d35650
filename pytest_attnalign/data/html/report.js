"use strict";
// Renders the task views of a pytest-attnalign page from its JSON blob (html.py writes both).
const D = JSON.parse(document.getElementById("attn-data").textContent);
const state = { model: "", method: "", benchmark: "", outcome: "", pattern: "", q: "", k: String(D.k) };

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  node.append(...kids);
  return node;
}

function select(name, label, options, value) {
  const s = el("select", { id: "f-" + name, name });
  for (const [v, text] of options) s.append(el("option", { value: v }, text));
  s.value = value;
  s.addEventListener("change", () => { state[name] = s.value; update(); });
  return el("label", {}, label, s);
}

// The description with labelled keywords (class lab lab-TYPE) and top-K units (class top) marked;
// every marked piece carries its offsets in the description (data-s, data-e).
function marked(text, labels, spans) {
  const cuts = new Set([0, text.length]);
  for (const [s, e] of [...labels, ...spans]) { cuts.add(s); cuts.add(e); }
  const points = [...cuts].filter((x) => x >= 0 && x <= text.length).sort((a, b) => a - b);
  const out = el("pre", { class: "desc" });
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i], b = points[i + 1];
    const lab = labels.find(([s, e]) => s <= a && b <= e);
    const top = spans.some(([s, e]) => s <= a && b <= e);
    if (!lab && !top) { out.append(text.slice(a, b)); continue; }
    const classes = [lab ? "lab lab-" + lab[2] : "", top ? "top" : ""].join(" ").trim();
    const title = [lab ? "labelled " + lab[2].replace("_", " ") : "", top ? "top-" + state.k : ""].filter(Boolean);
    out.append(el("span", { class: classes, "data-s": a, "data-e": b, title: title.join(", ") }, text.slice(a, b)));
  }
  return out;
}

function fmt(x, pct) { return x === null || x === undefined ? "undefined" : pct ? (100 * x).toFixed(1) + "%" : x.toFixed(2); }

function shownMethods(gen) {
  return D.methods.filter((m) => m in gen.methods && (!state.method || m === state.method));
}

function renderTask(details) {
  const gen = D.gens[details.dataset.index];
  const task = D.tasks[gen.task];
  const body = el("div", { class: "body" });
  for (const m of shownMethods(gen)) {
    const rec = gen.methods[m];
    const spans = rec.top[state.k] || [];
    const sc = rec.scores[state.k] || {};
    const head = el("h4", {}, `${m}: top-${state.k} units marked; F1 ${fmt(sc.f1, true)}, alpha ${fmt(sc.alpha, false)}`);
    const view = el("div", { class: "view", "data-method": m }, head, marked(task.text, task.labels, spans));
    if (rec.patterns.length) view.append(el("div", { class: "patterns-list" }, `error patterns (K=${D.error_k}): ${rec.patterns.join(", ")}`));
    body.append(view);
  }
  body.append(el("h4", {}, "completion (", el("span", { class: "outcome-" + gen.outcome }, gen.outcome), ")"),
    el("pre", { class: "code" }, gen.no_code ? "(no code)" : gen.completion.replace(/^\n+/, "")));
  if (!gen.passed) body.append(el("h4", {}, "test output (tail)"), el("pre", { class: "tail" }, gen.tail || "(none)"));
  details.querySelector(".body")?.remove();
  details.append(body);
}

function matches(gen) {
  if (state.model && gen.model !== state.model) return false;
  if (state.benchmark && D.tasks[gen.task].benchmark !== state.benchmark) return false;
  if (state.outcome && gen.outcome !== state.outcome) return false;
  if (state.q && !gen.task.toLowerCase().includes(state.q.toLowerCase())) return false;
  const methods = shownMethods(gen);
  if (!methods.length) return false;
  return !state.pattern || methods.some((m) => gen.methods[m].patterns.includes(state.pattern));
}

function update() {
  let shown = 0;
  for (const details of document.querySelectorAll("details.task")) {
    const ok = matches(D.gens[details.dataset.index]);
    details.hidden = !ok;
    shown += ok;
    if (ok && details.open) renderTask(details);
  }
  document.getElementById("count").textContent = `${shown} of ${D.gens.length} model x task views shown`;
}

function build() {
  const all = (xs) => [["", "all"], ...xs.map((x) => [x, x.replaceAll("_", " ")])];
  const benchmarks = [...new Set(Object.values(D.tasks).map((t) => t.benchmark))];
  const outcomes = [...new Set(D.gens.map((g) => g.outcome))].sort();
  const search = el("input", { id: "f-q", type: "search", placeholder: "HumanEval/12" });
  search.addEventListener("input", () => { state.q = search.value; update(); });
  document.getElementById("controls").append(
    select("model", "model", all(D.models), ""), select("method", "method", all(D.methods), ""),
    select("benchmark", "benchmark", all(benchmarks), ""), select("outcome", "outcome", all(outcomes), ""),
    select("pattern", "error pattern", all(D.patterns), ""),
    select("k", "top-K", D.ks.map((k) => [String(k), String(k)]), state.k), el("label", {}, "task id", search));
  document.getElementById("legend").append("Labelled keywords: ",
    ...D.types.map((t) => el("span", { class: "lab lab-" + t }, t.replace("_", " "))),
    el("span", { class: "top" }, "a method's top-K unit"));
  const list = document.getElementById("list");
  D.gens.forEach((gen, i) => {
    const patterns = [...new Set(Object.values(gen.methods).flatMap((r) => r.patterns))];
    const summary = el("summary", {}, `${gen.task} · ${gen.model} · `,
      el("span", { class: "outcome-" + gen.outcome }, gen.outcome), patterns.length ? " · " + patterns.join(", ") : "");
    const details = el("details", { class: "task", "data-index": i, "data-task": gen.task, "data-model": gen.model }, summary);
    details.addEventListener("toggle", () => { if (details.open) renderTask(details); });
    list.append(details);
  });
  update();
}

build();
