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
// every marked piece carries its offsets in the description (data-s, data-e). With a code map,
// the map's units ([s, e, index]) are pieces too (class unit, data-u), focusable and selectable.
function marked(text, labels, spans, units) {
  const cuts = new Set([0, text.length]);
  for (const [s, e] of [...labels, ...spans, ...units]) { cuts.add(s); cuts.add(e); }
  const points = [...cuts].filter((x) => x >= 0 && x <= text.length).sort((a, b) => a - b);
  const out = el("pre", { class: "desc" });
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i], b = points[i + 1];
    const lab = labels.find(([s, e]) => s <= a && b <= e);
    const top = spans.some(([s, e]) => s <= a && b <= e);
    const unit = units.find(([s, e]) => s <= a && b <= e);
    if (!lab && !top && !unit) { out.append(text.slice(a, b)); continue; }
    const classes = [lab ? "lab lab-" + lab[2] : "", top ? "top" : "", unit ? "unit" : ""].join(" ").trim();
    const title = [lab ? "labelled " + lab[2].replace("_", " ") : "", top ? "top-" + state.k : ""].filter(Boolean);
    const attrs = { class: classes, "data-s": a, "data-e": b, title: title.join(", ") };
    if (unit) Object.assign(attrs, { "data-u": unit[2], tabindex: 0, role: "button", "aria-pressed": "false" });
    out.append(el("span", attrs, text.slice(a, b)));
  }
  return out;
}

function fmt(x, pct) { return x === null || x === undefined ? "undefined" : pct ? fixed(100 * x, 1) + "%" : fixed(x, 2); }

// Python's f"{x:.Nf}", as the terminal prints: an exact tie rounds half to even (toFixed rounds it away
// from zero: 0.125 gave 0.13 here and 0.12 there). toFixed(100) spells a score's double exactly.
function fixed(x, digits) {
  const exact = Math.abs(x).toFixed(100), cut = exact.indexOf(".") + 1 + digits;
  if (/^50*$/.test(exact.slice(cut)) && Number(exact[cut - 1]) % 2 === 0) {
    return (x < 0 ? "-" : "") + exact.slice(0, digits ? cut : cut - 1);
  }
  return x.toFixed(digits);
}

// The shown methods this generation has: its own keys, as a method may be named "constructor" or "__proto__".
function shownMethods(gen) {
  return D.methods.filter((m) => Object.hasOwn(gen.methods, m) && (!state.method || m === state.method));
}

// The completion as shown (leading newlines dropped), one span per line (class line, data-s/data-e:
// its characters in the completion); a line some shown code map covers is focusable and selectable.
function codeLines(gen, methods) {
  const out = el("pre", { class: "code" });
  if (gen.no_code) { out.append("(no code)"); return out; }
  const mapped = new Set(methods.flatMap((m) => (gen.methods[m].lines || []).map((l) => l[0])));
  const text = gen.completion;
  let start = text.length - text.replace(/^\n+/, "").length;
  for (const line of text.slice(start).split("\n")) {
    if (out.childNodes.length) out.append("\n");
    const attrs = { class: "line", "data-s": start, "data-e": start + line.length };
    if (mapped.has(start)) Object.assign(attrs, { class: "line mapped", tabindex: 0, role: "button", "aria-pressed": "false" });
    out.append(el("span", attrs, line));
    start += line.length + 1;
  }
  return out;
}

// The code-to-words map of a task view: a code line lights, in each CODING view, the units that view's
// map attributes to the line; a unit lights the code lines that leaned on it (that view's map). Hover or
// focus previews; click, Enter or Space selects (again: clears), and the selection returns after a preview.
// Intensity (--w) is a weight relative to the strongest lit one.
function wireMap(body, gen) {
  let selected = null;
  const target = (ev) => ev.target.closest && ev.target.closest(".code .line.mapped, .view .unit");
  const lit = (node, w, top) => { node.classList.add("lit"); node.style.setProperty("--w", (w / top).toFixed(2)); };
  const pairs = (flat) => flat.flatMap((x, i) => (i % 2 ? [] : [[x, flat[i + 1]]]));
  function light(node) {
    for (const n of body.querySelectorAll(".lit, .sel")) { n.classList.remove("lit", "sel"); n.style.removeProperty("--w"); }
    if (!node) return;
    if (node.classList.contains("line")) {
      node.classList.add("sel");
      for (const view of body.querySelectorAll(".view[data-map]")) {
        const entry = gen.methods[view.dataset.method].lines.find((l) => l[0] === +node.dataset.s);
        const units = entry ? pairs(entry[2]) : [];
        const top = Math.max(...units.map(([, w]) => w));
        for (const [u, w] of units) for (const n of view.querySelectorAll(`.unit[data-u="${u}"]`)) lit(n, w, top);
      }
      return;
    }
    const view = node.closest(".view");
    const u = +node.dataset.u;
    for (const n of view.querySelectorAll(`.unit[data-u="${u}"]`)) n.classList.add("sel");
    const lines = gen.methods[view.dataset.method].lines
      .map((l) => [l[0], (pairs(l[2]).find(([x]) => x === u) || [])[1]]).filter(([, w]) => w);
    const top = Math.max(...lines.map(([, w]) => w));
    for (const [s, w] of lines) lit(body.querySelector(`.code .line[data-s="${s}"]`), w, top);
  }
  function choose(node) {
    selected = selected === node ? null : node;
    for (const n of body.querySelectorAll("[aria-pressed]")) n.setAttribute("aria-pressed", String(n === selected));
    light(selected);
  }
  const preview = (ev) => { const t = target(ev); if (t) light(t); };
  const restore = (ev) => { const t = target(ev); if (t && !t.contains(ev.relatedTarget)) light(selected); };
  body.addEventListener("mouseover", preview);
  body.addEventListener("focusin", preview);
  body.addEventListener("mouseout", restore);
  body.addEventListener("focusout", restore);
  body.addEventListener("click", (ev) => { const t = target(ev); if (t) choose(t); });
  body.addEventListener("keydown", (ev) => {
    const t = target(ev);
    if (t && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); choose(t); }
  });
}

function renderTask(details) {
  const gen = D.gens[details.dataset.index];
  const task = D.tasks[gen.task];
  const body = el("div", { class: "body" });
  const methods = shownMethods(gen);
  for (const m of methods) {
    const rec = gen.methods[m];
    const spans = rec.top[state.k] || [];
    const sc = rec.scores[state.k] || {};
    const units = [...new Set((rec.lines || []).flatMap((l) => l[2].filter((_, i) => i % 2 === 0)))]
      .map((u) => [...gen.units[u], u]);
    const head = el("h4", {}, `${m}: top-${state.k} units marked; F1 ${fmt(sc.f1, true)}, alpha ${fmt(sc.alpha, false)}`,
      rec.lines ? "; code-to-words map" : "");
    const view = el("div", { class: "view", "data-method": m }, head, marked(task.text, task.labels, spans, units));
    if (rec.lines) view.dataset.map = "1";
    if (rec.patterns.length) view.append(el("div", { class: "patterns-list" }, `error patterns (K=${D.error_k}): ${rec.patterns.join(", ")}`));
    body.append(view);
  }
  body.append(el("h4", {}, "completion (", el("span", { class: "outcome-" + gen.outcome }, gen.outcome), ")"),
    codeLines(gen, methods));
  if (!gen.passed) body.append(el("h4", {}, "test output (tail)"), el("pre", { class: "tail" }, gen.tail || "(none)"));
  details.querySelector(".body")?.remove();
  details.append(body);
  wireMap(body, gen);
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
    el("span", { class: "top" }, "a method's top-K unit"),
    el("p", { class: "map-legend" }, el("span", { class: "lit", style: "--w: 1" }, "Code-to-words map"),
      " (CODING methods): hover, focus or select (click, Enter, Space) a line of the code and each CODING view " +
      "lights the description units its per-step scores of that line's tokens add up to (darker: more, relative " +
      "to the strongest lit unit); select a unit to light the code lines that leaned on it. The selection is " +
      `outlined. Each line keeps only its top ${D.line_top} units (scores rounded to ${D.digits} significant digits).`));
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
