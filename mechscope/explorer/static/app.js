// mechscope explorer front end: vanilla JS, no build step. Everything the server computes
// arrives as JSON; this file only lays it out. Untrusted text (tokens, corpus contexts) is only
// ever inserted with textContent, never as HTML.
"use strict";

const state = { info: null, prompt: null, analysis: null, token: null, feature: null, circuits: {} };
const SVG_NS = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------------------------- helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toPrecision(d));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toPrecision(3) + "%");

// Show whitespace in token text: newlines as ↵, tabs as →.
function showToken(text) {
  return text.replace(/\n/g, "↵").replace(/\t/g, "→");
}

let busyCount = 0;
function busy(on) {
  busyCount += on ? 1 : -1;
  $("busy").hidden = busyCount <= 0;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  busy(true);
  try {
    const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const res = await fetch(path, opts);
    const data = await res.json().catch(() => ({ error: { message: `HTTP ${res.status}` } }));
    if (!res.ok) {
      const msg = (data && data.error && data.error.message) || `HTTP ${res.status}`;
      throw new Error(msg);
    }
    showError("");
    return data;
  } catch (e) {
    showError(e.message);
    throw e;
  } finally {
    busy(false);
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// Background colour for an activation in [0, max]: white -> orange.
function actColour(a, max) {
  const t = max > 0 ? Math.max(0, Math.min(1, a / max)) : 0;
  return `rgba(255, 120, 0, ${(0.85 * t).toFixed(3)})`;
}

// Signed colour: blue (negative) - white - red (positive).
function signedColour(v, max) {
  const t = max > 0 ? Math.max(-1, Math.min(1, v / max)) : 0;
  return t >= 0 ? `rgba(214, 39, 40, ${(0.85 * t).toFixed(3)})` : `rgba(31, 119, 180, ${(-0.85 * t).toFixed(3)})`;
}

// Opaque signed colour for SVG fills: white at 0, red at +1, blue at -1.
function opaqueColour(t) {
  const a = Math.max(-1, Math.min(1, t || 0));
  const mix = (c) => Math.round(255 + (c - 255) * Math.abs(a) * 0.9);
  const [r, g, b] = a >= 0 ? [214, 39, 40] : [31, 119, 180];
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

// ---------------------------------------------------------------------------------- views
function route() {
  const hash = location.hash.replace(/^#/, "") || "prompt";
  const [view, ...args] = hash.split("/");
  for (const v of ["prompt", "feature", "circuits", "linear"]) {
    $("view-" + v).hidden = v !== view;
    const link = document.querySelector(`nav a[data-view="${v}"]`);
    if (link) link.classList.toggle("active", v === view);
  }
  if (view === "feature" && args.length === 2) {
    $("feature-dictionary").value = args[0];
    $("feature-id").value = args[1];
    showDashboard(Number(args[0]), Number(args[1]), $("dashboard-standalone"));
  } else if (view === "circuits") {
    renderCircuitList();
    if (args.length === 1) openCircuit(Number(args[0]));
  } else if (view === "linear") {
    openLinear();
  }
}

// ---------------------------------------------------------------------------------- prompt view
async function analyze(prompt) {
  const data = await api("/api/prompt", { prompt, top_k_predictions: 5, top_k_features: 8 });
  state.prompt = prompt;
  state.analysis = data;
  state.token = null;
  state.feature = null;
  state.featureSel = null;
  renderTokens();
  $("token-panel").hidden = true;
  $("feature-panel").hidden = true;
  selectToken(data.tokens.length - 1);
}

function renderTokens(acts) {
  const box = clear($("tokens"));
  const a = state.analysis;
  if (!a) return;
  const max = acts ? Math.max(...acts, 1e-9) : 0;
  a.tokens.forEach((t, i) => {
    const pred = a.predictions[i][0];
    const node = el("span", {
      class: "tok" + (i === state.token ? " selected" : ""), "data-index": i,
      title: `#${i} id ${t.id}` + (acts ? `\nactivation ${fmt(acts[i])}` : "") + `\nnext: ${JSON.stringify(pred.text)} (${pct(pred.prob)})`,
      onclick: () => selectToken(i),
    },
    el("span", { class: "tok-text", text: showToken(t.text) }),
    el("span", { class: "tok-pred", text: showToken(pred.text) }),
    acts ? el("span", { class: "tok-act", text: acts[i] > 0 ? fmt(acts[i], 2) : "" }) : null);
    if (acts) node.style.backgroundColor = actColour(acts[i], max);
    box.append(node);
  });
}

async function selectToken(i) {
  state.token = i;
  const a = state.analysis;
  renderTokens(state.feature ? state.feature.acts : undefined);
  const panel = clear($("token-panel"));
  panel.hidden = false;
  const t = a.tokens[i];
  panel.append(el("h2", {}, "Token ", el("code", { text: showToken(t.text) }), ` (#${i}, id ${t.id})`));
  panel.append(el("h3", { text: "Top next-token predictions" }));
  panel.append(el("table", { class: "preds" },
    el("tr", {}, el("th", { text: "token" }), el("th", { text: "prob" }), el("th", { text: "logit" })),
    a.predictions[i].map((p) => el("tr", {}, el("td", {}, el("code", { text: showToken(p.text) })), el("td", { class: "num", text: pct(p.prob) }), el("td", { class: "num", text: fmt(p.logit) })))));
  if (!state.info.dictionaries.length) {
    panel.append(el("p", { class: "hint", text: "No dictionaries loaded (start the server with --dictionary DIR)." }));
    return;
  }
  // an attention-output feature is selected: move its head split / DFA to this query token
  const sel = state.featureSel;
  if (sel && state.info.dictionaries[sel.dictionary].attention) {
    api("/api/feature", { prompt: state.prompt, dictionary: sel.dictionary, feature: sel.feature, position: i })
      .then((res) => renderAttention(clear($("attention")), res.attention))
      .catch(() => {}); // api() has already shown the error in the banner
  }
  for (const f of a.features) {
    const d = state.info.dictionaries[f.dictionary];
    panel.append(el("h3", {}, `Top features · ${d.name}`, d.attention ? el("span", { class: "badge", text: "attention" }) : null));
    const top = f.top[i];
    if (!top.length) panel.append(el("p", { class: "hint", text: "no active features at this token" }));
    panel.append(el("div", { class: "chips" }, top.map((x) => el("button", {
      class: "feature-chip", type: "button", "data-dictionary": f.dictionary, "data-feature": x.feature,
      onclick: () => selectFeature(f.dictionary, x.feature, i),
    }, el("b", { text: `#${x.feature}` }), " ", fmt(x.act)))));
  }
}

async function selectFeature(dictionary, feature, position) {
  const d = state.info.dictionaries[dictionary];
  const res = await api("/api/feature", { prompt: state.prompt, dictionary, feature, position });
  state.feature = res;
  state.featureSel = { dictionary, feature };
  renderTokens(res.acts);
  const panel = $("feature-panel");
  panel.hidden = false;
  const summary = clear($("feature-summary"));
  summary.append(el("h2", {}, `Feature #${feature} `, el("span", { class: "light", text: `· ${d.name}` })));
  summary.append(el("p", {}, `Highlighted across the prompt above (orange = active). Max ${fmt(res.max)} at token #${res.argmax}. `,
    el("a", { href: `#feature/${dictionary}/${feature}`, text: "open in Features tab" })));
  const att = clear($("attention"));
  if (res.attention) renderAttention(att, res.attention);
  await showDashboard(dictionary, feature, $("dashboard"));
}

function renderAttention(box, a) {
  const tokens = state.analysis.tokens;
  box.append(el("h3", {}, `Attention layer ${a.layer} at query token #${a.position} `, el("code", { text: showToken(tokens[a.position].text) })));
  box.append(el("p", { class: "hint", text: `activation ${fmt(a.activation)} · pre-activation ${fmt(a.pre_activation)} = Σ heads ${fmt(a.pre_activation - a.bias)} + bias ${fmt(a.bias)} (check ${fmt(a.check, 2)}). Click a token to move the query.` }));
  // head split: pre-activation contribution and decoder-norm share per head
  const maxHead = Math.max(...a.by_head.map(Math.abs), 1e-9);
  const table = el("table", { class: "heads" }, el("tr", {}, el("th", { text: "head" }), el("th", { text: "contribution to pre-activation" }), el("th", { text: "decoder share" })));
  a.by_head.forEach((v, h) => {
    const bar = el("div", { class: "bar " + (v >= 0 ? "pos" : "neg") });
    bar.style.width = `${(60 * Math.abs(v)) / maxHead}px`;
    const share = el("div", { class: "bar share" });
    share.style.width = `${60 * a.decoder_share[h]}px`;
    table.append(el("tr", { class: "head-row" }, el("td", { text: `${a.layer}.${h}` }),
      el("td", {}, el("div", { class: "barcell" }, bar, el("span", { text: fmt(v) }))),
      el("td", {}, el("div", { class: "barcell" }, share, el("span", { text: pct(a.decoder_share[h]) })))));
  });
  box.append(table);
  // DFA: heads x source tokens
  box.append(el("h3", { text: "Direct feature attribution by source token" }));
  const maxD = Math.max(...a.dfa.flat().map(Math.abs), 1e-9);
  const dfa = el("table", { class: "dfa" });
  dfa.append(el("tr", {}, el("th", { text: "head \\ source" }), a.dfa_by_source.map((_, k) => el("th", { title: `#${k}` }, el("code", { text: showToken(tokens[k].text) }))),
    el("th", { class: "light", title: "the value bias b_V the head passes on (not tied to a source token)", text: "b_V" })));
  a.dfa.forEach((row, h) => {
    dfa.append(el("tr", {}, el("th", { text: `${a.layer}.${h}` }), row.map((v, k) => {
      const cell = el("td", { class: "num", title: `head ${a.layer}.${h}, source #${k}: ${fmt(v)}`, text: fmt(v, 2) });
      cell.style.backgroundColor = signedColour(v, maxD);
      return cell;
    }), el("td", { class: "num light", text: fmt(a.value_bias[h], 2) })));
  });
  const maxS = Math.max(...a.dfa_by_source.map(Math.abs), 1e-9);
  dfa.append(el("tr", { class: "total" }, el("th", { text: "all heads" }), a.dfa_by_source.map((v) => {
    const cell = el("td", { class: "num", text: fmt(v, 2) });
    cell.style.backgroundColor = signedColour(v, maxS);
    return cell;
  }), el("td", { class: "num light", text: fmt(a.value_bias.reduce((x, y) => x + y, 0), 2) })));
  box.append(el("div", { class: "scroll" }, dfa));
}

// ---------------------------------------------------------------------------------- dashboards
async function showDashboard(dictionary, feature, box) {
  clear(box);
  box.append(el("p", { class: "hint", text: "computing the dashboard (the first time for a dictionary this takes a while; then it is cached)…" }));
  let dash;
  try {
    dash = await api(`/api/dictionaries/${dictionary}/features/${feature}`);
  } catch (e) {
    clear(box);
    return;
  }
  clear(box);
  const d = state.info.dictionaries[dictionary];
  box.append(el("h3", { class: "dash-title" }, `Dashboard · feature #${feature} · ${d.name}`));
  box.append(el("p", { class: "stats" },
    el("span", {}, "density ", el("b", { class: "density", text: pct(dash.density) })),
    el("span", {}, "active on ", el("b", { text: `${dash.count} / ${dash.n_tokens}` }), " tokens"),
    el("span", {}, "max ", el("b", { text: fmt(dash.max) })),
    el("span", {}, "mean when active ", el("b", { text: fmt(dash.mean_when_active) })),
    el("span", { class: "light", text: `corpus ${dash.corpus} · cache: ${dash.cache}` })));
  const row = el("div", { class: "dash-row" });
  row.append(el("div", { class: "dash-hist" }, el("h4", { text: "Activation histogram (active tokens)" }), histogram(dash.histogram)));
  if (dash.logits) {
    const list = (items, cls) => el("table", { class: "logits " + cls }, items.map((x) => el("tr", {}, el("td", {}, el("code", { text: showToken(x.text) })), el("td", { class: "num", text: fmt(x.value) }))));
    row.append(el("div", { class: "dash-logits" }, el("h4", { text: "Decoder logit effects" }),
      el("div", { class: "two" }, el("div", {}, el("h5", { text: "promotes" }), list(dash.logits.top, "pos")),
        el("div", {}, el("h5", { text: "suppresses" }), list(dash.logits.bottom, "neg")))));
  } else {
    row.append(el("div", { class: "dash-logits" }, el("p", { class: "hint", text: "no logit effects: this dictionary's output is not a residual-stream write the explorer can map to logits" })));
  }
  box.append(row);
  box.append(el("h4", { text: "Top activating contexts" }));
  if (!dash.top.length) box.append(el("p", { class: "hint", text: "this feature never fires on the corpus slice (a dead feature)" }));
  const list = el("div", { class: "contexts" });
  for (const ex of dash.top) {
    const line = el("div", { class: "dash-context", title: `context ${ex.context}, position ${ex.position}` }, el("span", { class: "ctx-value", text: fmt(ex.value) }));
    for (const t of ex.tokens) {
      const span = el("span", { class: "ctx-tok" + (t.current ? " current" : ""), title: `activation ${fmt(t.act)}`, text: showToken(t.text) });
      span.style.backgroundColor = actColour(t.act, dash.max);
      line.append(span);
    }
    list.append(line);
  }
  box.append(list);
}

function histogram(h) {
  const W = 320, H = 110, pad = 18;
  const n = h.counts.length;
  const max = Math.max(...h.counts, 1);
  const bw = (W - 2 * pad) / n;
  const root = svg("svg", { width: W, height: H + 20, class: "hist", role: "img" });
  h.counts.forEach((c, i) => {
    const bh = ((H - 10) * c) / max;
    root.append(svg("rect", { x: pad + i * bw, y: H - bh, width: Math.max(1, bw - 1), height: bh, class: "hist-bar" },
      svg("title", {}, document.createTextNode(`${fmt(h.edges[i])}–${fmt(h.edges[i + 1])}: ${c}`))));
  });
  root.append(svg("line", { x1: pad, y1: H, x2: W - pad, y2: H, class: "axis" }));
  const label = (x, t, anchor) => svg("text", { x, y: H + 14, "text-anchor": anchor, class: "tick" }, document.createTextNode(t));
  root.append(label(pad, "0", "start"), label(W - pad, fmt(h.edges[n]), "end"));
  return root;
}

// ---------------------------------------------------------------------------------- circuits
function renderCircuitList() {
  const box = clear($("circuit-list"));
  if (!state.info.circuits.length) {
    box.append(el("p", { class: "hint", text: "No circuits loaded (start the server with --circuit FILE)." }));
    return;
  }
  for (const c of state.info.circuits) {
    box.append(el("a", { class: "circuit-link", href: `#circuits/${c.id}`, "data-circuit": c.id },
      el("b", { text: c.name }), ` · ${c.method} on ${c.task} · ${c.n_nodes_selected} nodes`, c.has_ground_truth ? " · ground truth" : ""));
  }
}

async function openCircuit(id) {
  document.querySelectorAll(".circuit-link").forEach((a) => a.classList.toggle("active", a.dataset.circuit === String(id)));
  const c = state.circuits[id] || (state.circuits[id] = await api(`/api/circuits/${id}?max_edges=300`));
  const box = clear($("circuit-detail"));
  box.append(el("h2", {}, `${c.name} `, el("span", { class: "light", text: `· ${c.method} · task ${c.task} · model ${c.model}` })));
  box.append(el("p", { class: "hint", text: `${c.n_node_scores} node scores, ${c.n_edge_scores} edge scores (${c.n_edges_shown} edges drawn)` + (c.graph ? ` · ${c.graph}` : "") + (c.runtime_s ? ` · found in ${fmt(c.runtime_s)} s` : "") }));
  box.append(scoreBlock(c));
  box.append(circuitSvg(c));
  box.append(el("p", { class: "legend" },
    el("span", { class: "lg sel" }, "selected node"), el("span", { class: "lg truth" }, "in ground truth"),
    el("span", { class: "lg q" }, "→ query"), el("span", { class: "lg k" }, "→ key"), el("span", { class: "lg v" }, "→ value"),
    el("span", { class: "lg o" }, "→ MLP / logits"), el("span", { text: "node colour: score (red +, blue −); edge width: |score|" })));
}

function scoreBlock(c) {
  const box = el("div", { class: "score" });
  if (c.score_error) box.append(el("p", { class: "error-inline", text: `Could not score against the ground truth: ${c.score_error}` }));
  if (!c.ground_truth) {
    box.append(el("p", { class: "hint", text: "No ground truth for this circuit (pass --ground-truth NAME|FILE)." }));
    return box;
  }
  const g = c.ground_truth;
  box.append(el("p", {}, "Ground truth: ", el("b", { text: `${g.model} / ${g.task}` }), ` · ${g.nodes.length} nodes, ${g.n_edges} edges`, g.citation ? el("span", { class: "light", text: ` · ${g.citation}` }) : null));
  if (c.score) {
    const rows = [["nodes", c.score.nodes], ["edges", c.score.edges]].filter(([, s]) => s);
    box.append(el("table", { class: "score-table" },
      el("tr", {}, ["", "ROC AUC", "precision@|GT|", "recall@|GT|", "F1@|GT|", "candidates", "in GT"].map((h) => el("th", { text: h }))),
      rows.map(([name, s]) => el("tr", {}, el("th", { text: name }), el("td", { class: "num auc", text: fmt(s.auc) }),
        el("td", { class: "num", text: fmt(s.at_gt_size.precision) }), el("td", { class: "num", text: fmt(s.at_gt_size.recall) }),
        el("td", { class: "num", text: fmt(s.at_gt_size.f1) }), el("td", { class: "num", text: s.n_candidates }), el("td", { class: "num", text: s.n_truth })))));
  }
  return box;
}

function circuitSvg(c) {
  // columns: embed, then each distinct layer value (heads L, MLP L + 0.5), then unknown kinds, then logits
  const layers = [...new Set(c.nodes.filter((n) => n.layer !== null).map((n) => n.layer))].sort((a, b) => a - b);
  const colOf = new Map(layers.map((l, i) => [l, i]));
  const others = c.nodes.filter((n) => n.layer === null && n.id !== "logits");
  const nCols = layers.length + (others.length ? 1 : 0) + 1;
  const columns = Array.from({ length: nCols }, () => []);
  for (const n of c.nodes) {
    const col = n.id === "logits" ? nCols - 1 : n.layer === null ? layers.length : colOf.get(n.layer);
    columns[col].push(n);
  }
  const colW = 110, rowH = 50, padX = 44, padY = 30;
  const maxRows = Math.max(...columns.map((c) => c.length), 1);
  const W = padX * 2 + colW * (nCols - 1), H = padY * 2 + 14 + rowH * (maxRows - 1);
  const pos = new Map();
  columns.forEach((nodes, ci) => nodes.forEach((n, ri) => {
    const y = padY + (H - 14 - 2 * padY) / 2 + (ri - (nodes.length - 1) / 2) * rowH;
    pos.set(n.id, { x: padX + ci * colW, y });
  }));
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "circuit-svg", role: "img" });
  const edgeLayer = svg("g", { class: "edges" });
  const sorted = [...c.edges].sort((a, b) => Math.abs(a.norm_score) - Math.abs(b.norm_score));
  for (const e of sorted) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const mx = (a.x + b.x) / 2;
    const w = 0.4 + 3.6 * Math.abs(e.norm_score || 0);
    edgeLayer.append(svg("path", {
      d: `M${a.x},${a.y} C${mx},${a.y} ${mx},${b.y} ${b.x},${b.y}`,
      class: `edge ch-${e.channel || "o"}` + (e.selected ? " selected" : "") + (e.in_truth ? " truth" : ""),
      "stroke-width": w.toFixed(2),
    }, svg("title", {}, document.createTextNode(`${e.src} → ${e.dst}${e.channel ? "." + e.channel : ""}: ${fmt(e.score)}`))));
  }
  root.append(edgeLayer);
  const nodeLayer = svg("g", { class: "nodes" });
  for (const n of c.nodes) {
    const p = pos.get(n.id);
    const g = svg("g", { class: `node kind-${n.kind}` + (n.selected ? " selected" : "") + (n.in_truth ? " truth" : ""), transform: `translate(${p.x},${p.y})`, "data-node": n.id });
    if (n.in_truth) g.append(svg("circle", { r: 14, class: "truth-ring" }));
    const shape = n.kind === "mlp" ? svg("rect", { x: -11, y: -9, width: 22, height: 18, rx: 3 }) : svg("circle", { r: 10 });
    shape.setAttribute("fill", n.kind === "embed" || n.kind === "logits" ? "#ddd" : opaqueColour(n.norm_score));
    shape.setAttribute("class", "node-shape");
    g.append(shape, svg("text", { y: 27, "text-anchor": "middle", class: "node-label" }, document.createTextNode(n.id)),
      svg("title", {}, document.createTextNode(`${n.id}: score ${fmt(n.score)}${n.selected ? " · selected" : ""}${n.in_truth ? " · in ground truth" : ""}`)));
    nodeLayer.append(g);
  }
  root.append(nodeLayer);
  return el("div", { class: "scroll circuit-graph" }, root);
}

// ---------------------------------------------------------------------------------- linear view
let linearData = null;

async function openLinear() {
  const box = $("linear");
  if (!state.info.linear.available) {
    clear(box).append(el("p", { class: "hint", text: "No linear map loaded (start the server with --linear-demo digits|superres|denoise or --linear-map DIR)." }));
    return;
  }
  if (linearData) return;
  clear(box).append(el("p", { class: "hint", text: "linearizing and computing the SVD…" }));
  linearData = await api("/api/linear");
  renderLinear(box, linearData);
}

function image(img, cls, onclick) {
  const scale = Math.max(1, Math.floor(96 / Math.max(img.width, img.height)));
  const node = el("img", { src: img.png, alt: img.title, title: `${img.title} (range ${fmt(img.min)} … ${fmt(img.max)})`, class: "pix " + (cls || "") });
  node.style.width = `${img.width * scale}px`;
  node.style.height = `${img.height === 1 ? 18 : img.height * scale}px`; // a vector: a strip tall enough to see
  if (onclick) {
    node.classList.add("clickable");
    node.addEventListener("click", (ev) => {
      const y = Math.floor((ev.offsetY / node.clientHeight) * img.height);
      const x = Math.floor((ev.offsetX / node.clientWidth) * img.width);
      onclick(Math.min(img.height - 1, Math.max(0, y)), Math.min(img.width - 1, Math.max(0, x)));
    });
  }
  return el("figure", { class: "fig" }, node, el("figcaption", { text: img.title }));
}

function renderLinear(box, L) {
  clear(box);
  box.append(el("h2", {}, "Linear interpreter ", el("span", { class: "light", text: `· ${L.description}` })));
  box.append(el("p", { class: "hint", text: `y = A x + c, exact at this input (A frozen at x0): input ${JSON.stringify(L.in_shape)} → output ${JSON.stringify(L.out_shape)}. ` +
    (L.input_is_image ? "Click a pixel of the input to see its column (the output's response to an impulse there). " : "") +
    (L.output_is_image ? "Click a pixel of the output to see its row (the filter that computes it)." : "") }));
  const pick = el("div", { id: "linear-pick", class: "figs" });
  const onInput = L.input_is_image ? async (y, x) => { const c = await api(`/api/linear/column?y=${y}&x=${x}`); clear(pick).append(image(c, "picked")); } : null;
  const onOutput = L.output_is_image ? async (y, x) => { const r = await api(`/api/linear/row?y=${y}&x=${x}`); clear(pick).append(image(r, "picked")); } : null;
  box.append(el("div", { class: "figs" }, L.input ? image(L.input, "", onInput) : null, L.output ? image(L.output, "", onOutput) : null, image(L.bias), pick));
  box.append(el("h3", { text: "Columns A eⱼ (impulse responses)" }), el("div", { class: "figs linear-columns" }, L.columns.map((c) => image(c))));
  box.append(el("h3", { text: "Rows Aᵀ eᵢ (filters)" }), el("div", { class: "figs linear-rows" }, L.rows.map((r) => image(r))));
  box.append(el("h3", { text: `Singular vectors (σ = ${L.svd.values.map((s) => fmt(s)).join(", ")})` }));
  box.append(el("div", { class: "figs linear-svd" }, L.svd.right.map((v, i) => el("div", { class: "pair" }, image(v), image(L.svd.left[i])))));
}

// ---------------------------------------------------------------------------------- start
async function init() {
  state.info = await api("/api/info");
  const m = state.info.model;
  $("model-name").textContent = `${m.name} · ${state.info.dictionaries.length} dictionaries · ${state.info.circuits.length} circuits`;
  const select = $("feature-dictionary");
  for (const d of state.info.dictionaries) select.append(el("option", { value: d.id, text: `${d.id}: ${d.name} (${d.n_latents} features)` }));
  $("prompt-input").maxLength = state.info.limits.max_prompt_chars;
  if (!m.has_tokenizer) $("prompt-hint").textContent = "This model has no tokenizer, so the prompt view is unavailable.";
  $("prompt-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt-input").value;
    if (text.trim()) analyze(text);
  });
  $("prompt-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("prompt-form").requestSubmit();
  });
  $("feature-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#feature/${$("feature-dictionary").value}/${$("feature-id").value}`;
  });
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "1";
}

init();
