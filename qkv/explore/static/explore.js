// qkv explore: the page. Plain JavaScript and canvas; it talks to the JSON API of
// qkv/explore/server.py and draws what comes back. Nothing is loaded from the network.
"use strict";

const $ = (id) => document.getElementById(id);

// -- colour maps: 256-entry tables interpolated between matplotlib's anchors --------------
function table(anchors) {
  const rgb = anchors.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
  const out = [];
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (rgb.length - 1);
    const k = Math.min(Math.floor(t), rgb.length - 2);
    const f = t - k;
    out.push(rgb[k].map((x, j) => Math.round(x + (rgb[k + 1][j] - x) * f)));
  }
  return out;
}
const VIRIDIS = table(["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]);
const INFERNO = table(["#000004", "#1f0c48", "#550f6d", "#88226a", "#ba3655", "#e35933", "#f98e09", "#f9cb35", "#fcffa4"]);

// index into a table for v on the scale lo..hi
function level(v, lo, hi) {
  if (!(hi > lo)) return 0;
  return Math.max(0, Math.min(255, Math.round(((v - lo) / (hi - lo)) * 255)));
}
const css = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
const fmt = (v) => (Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(1));

// -- state -----------------------------------------------------------------------------
const S = {
  info: null,
  data: null,       // the last API answer
  request: null,    // what produced it (resent when the layer changes)
  head: 0,          // a number, or "mean"
  query: 0,         // the row shown in "attends to" (text) / the query token (images)
  imageURL: null,   // the uploaded file, as a data: URL
  shown: null,      // an <img> of the image as the model sees it
  selected: null,   // detection: the index (into data.detections) of the chosen one
  threshold: 0.5,   // detection: the lowest score shown
};
window.qkvExplore = { state: S, VIRIDIS, INFERNO, level };

function busy(on, message) {
  document.body.dataset.busy = on ? "1" : "0";
  $("status").textContent = message || "";
}
function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}
function rendered() {
  document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
}

async function call(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let answer;
  try {
    const response = await fetch(path, options);
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  } catch (e) {
    throw new Error(answer && answer.error ? answer.error : e.message);
  }
  return answer;
}

// -- pickers ---------------------------------------------------------------------------
function layerNames() {
  const info = S.info;
  if (info.mode === "translation") return info.kinds[$("kind").value];
  return info.layers;
}
function headCount(layer) {
  const info = S.info;
  const heads = info.mode === "translation" ? info.heads[$("kind").value] : info.heads;
  return heads[layer];
}
function fillLayers(keep) {
  const names = layerNames();
  const select = $("layer");
  const old = keep ? Number(select.value) : names.length - 1;
  select.replaceChildren(...names.map((name, i) => new Option(`${i}: ${name}`, String(i))));
  select.value = String(Math.min(old, names.length - 1));
  fillHeads();
}
function fillHeads() {
  const count = headCount(Number($("layer").value));
  const select = $("head");
  const old = select.value;
  const options = [...Array(count).keys()].map((h) => new Option(`head ${h}`, String(h)));
  options.push(new Option("mean of heads", "mean"));
  select.replaceChildren(...options);
  select.value = old === "mean" || Number(old) < count ? old || "0" : "0";
  S.head = select.value === "mean" ? "mean" : Number(select.value);
}

// the (queries x keys) matrix of the chosen head, from one layer's (heads x queries x keys)
function headMatrix(weights, head) {
  if (head !== "mean") return weights[head];
  return weights[0].map((row, i) => row.map((_, j) => weights.reduce((s, w) => s + w[i][j], 0) / weights.length));
}
const maxOf = (m) => m.reduce((a, row) => Math.max(a, ...row), 0);

// -- drawing: a token x token heatmap with its labels -------------------------------------
function setupCanvas(canvas, width, height) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

const short = (label) => (label.length > 14 ? label.slice(0, 13) + "…" : label);

// cell sizes (cw x ch CSS pixels) for rows x cols in about width x height: square where the
// labels fit, else each side on its own (at most 3:1), so a long translation stays readable
function cellSize(rows, cols, width, height) {
  const fit = (room, n) => Math.max(2, Math.min(30, Math.floor(room / n)));
  let cw = fit(width, cols), ch = fit(height, rows);
  if (Math.min(cw, ch) >= 8) return [Math.min(cw, ch), Math.min(cw, ch)];
  return [Math.min(cw, 3 * ch), Math.min(ch, 3 * cw)];
}

function drawMatrix(canvas, matrix, rows, cols, options = {}) {
  const [cw, ch] = cellSize(rows.length, cols.length, options.width || 760, options.height || 720);
  const font = Math.max(8, Math.min(12, Math.min(cw, ch) - 2));
  const probe = canvas.getContext("2d");
  probe.font = `${font}px system-ui, sans-serif`;
  const everyRow = Math.ceil(10 / ch), everyCol = Math.ceil(10 / cw);  // every label when they fit, else every k-th
  const widest = (labels) => Math.min(110, Math.max(0, ...labels.map((l) => probe.measureText(short(l)).width)));
  const left = Math.ceil(widest(rows)) + 8;
  const top = Math.ceil(widest(cols)) + 8;
  const width = left + cw * cols.length + 2;
  const height = top + ch * rows.length + 2;
  const ctx = setupCanvas(canvas, width, height);
  const vmax = options.vmax !== undefined ? options.vmax : maxOf(matrix);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  for (let i = 0; i < rows.length; i++) {
    for (let j = 0; j < cols.length; j++) {
      ctx.fillStyle = css(VIRIDIS[level(matrix[i][j], 0, vmax)]);
      ctx.fillRect(left + j * cw, top + i * ch, cw, ch);
    }
  }
  ctx.font = `${font}px system-ui, sans-serif`;
  ctx.fillStyle = "#222";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  rows.forEach((label, i) => {
    if (i % everyRow === 0) ctx.fillText(short(label), left - 4, top + (i + 0.5) * ch);
  });
  ctx.save();
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "left";
  cols.forEach((label, j) => {
    if (j % everyCol === 0) ctx.fillText(short(label), -(top - 4), left + (j + 0.5) * cw);
  });
  ctx.restore();
  Object.assign(canvas.dataset, { left, top, cw, ch, rows: rows.length, cols: cols.length, vmax });
  return { left, top, cw, ch, vmax };
}

function drawLegend(box, lut, lo, hi, label) {
  const canvas = document.createElement("canvas");
  const ctx = setupCanvas(canvas, 180, 12);
  for (let x = 0; x < 180; x++) {
    ctx.fillStyle = css(lut[Math.round((x / 179) * 255)]);
    ctx.fillRect(x, 0, 1, 12);
  }
  const ticks = document.createElement("div");
  ticks.className = "ticks";
  for (const v of [lo, (lo + hi) / 2, hi]) {
    const t = document.createElement("span");
    t.textContent = fmt(v);
    ticks.append(t);
  }
  const caption = document.createElement("div");
  caption.className = "legend-label";
  caption.textContent = label;
  box.replaceChildren(caption, canvas, ticks);
  box.dataset.lo = lo;
  box.dataset.hi = hi;
}

// -- text and translation ------------------------------------------------------------------
function renderText() {
  const d = S.data;
  const matrix = headMatrix(d.weights, S.head);
  const canvas = $("matrix");
  const geo = drawMatrix(canvas, matrix, d.queries, d.keys);
  drawLegend($("matrix-legend"), VIRIDIS, 0, geo.vmax, "attention weight");
  const headName = S.head === "mean" ? "mean of heads" : `head ${S.head}`;
  $("matrix-title").textContent = `Layer ${d.layer} (${d.layer_name}), ${headName}`;
  let caption = "Rows: queries (the token that looks); columns: keys (the tokens it attends to). Each row sums to 1.";
  if (S.info.mode === "translation") {
    caption = {
      cross: "Rows: target tokens (the translation, after the start token); columns: source tokens. Each row sums to 1.",
      encoder: "Encoder self-attention over the source tokens. Rows: queries; columns: keys.",
      decoder: "Decoder self-attention over the target tokens (causal: nothing from the future).",
    }[d.kind];
  } else if (S.info.causal) {
    caption += " Causal: a token sees only itself and the tokens before it.";
  }
  $("matrix-caption").textContent = caption;
  if (S.query >= d.queries.length) S.query = 0;
  showRow(S.query);
  renderThumbs();
  rendered();
}

function showRow(i) {
  const d = S.data;
  const canvas = $("matrix");
  const matrix = headMatrix(d.weights, S.head);
  const [left, top, cw, ch] = ["left", "top", "cw", "ch"].map((k) => Number(canvas.dataset[k]));
  S.query = i;
  const hl = $("row-highlight");
  hl.hidden = false;
  hl.dataset.row = i;
  Object.assign(hl.style, {
    left: `${left - 2}px`, top: `${top + i * ch - 2}px`, width: `${cw * d.keys.length + 4}px`, height: `${ch + 4}px`,
  });
  $("query-token").textContent = `“${d.queries[i]}” (#${i})`;
  const row = matrix[i];
  const hi = Math.max(...row);
  const tokens = d.keys.map((key, j) => {
    const el = document.createElement("span");
    el.className = "tok";
    el.textContent = key;
    el.dataset.index = j;
    el.dataset.weight = row[j];
    el.title = `${key}: ${fmt(row[j])}`;
    const a = hi > 0 ? row[j] / hi : 0;
    el.style.background = `rgba(255, 140, 0, ${a.toFixed(3)})`;
    if (j === i && d.queries === d.keys) el.classList.add("self");
    return el;
  });
  $("attends").replaceChildren(...tokens);
}

// a matrix as a canvas of one pixel per cell, on 0..its max
function bitmap(matrix) {
  const c = document.createElement("canvas");
  c.width = matrix[0].length;
  c.height = matrix.length;
  const ctx = c.getContext("2d");
  const image = ctx.createImageData(c.width, c.height);
  const vmax = maxOf(matrix);
  matrix.forEach((row, i) => row.forEach((v, j) => {
    image.data.set([...VIRIDIS[level(v, 0, vmax)], 255], (i * c.width + j) * 4);
  }));
  ctx.putImageData(image, 0, 0);
  return c;
}

function renderThumbs() {
  const d = S.data;
  const box = $("heads");
  const thumbs = d.weights.map((w, h) => {
    const fig = document.createElement("figure");
    fig.className = "thumb" + (h === S.head ? " chosen" : "");
    fig.dataset.head = h;
    const c = document.createElement("canvas");
    const cw = 110 / d.keys.length, ch = 110 / d.queries.length;  // one size for every thumbnail
    const [tw, th] = [Math.min(cw, 3 * ch), Math.min(ch, 3 * cw)];
    const ctx = setupCanvas(c, Math.round(tw * d.keys.length), Math.round(th * d.queries.length));
    ctx.imageSmoothingEnabled = false;  // one pixel per cell, scaled up: sharp cells, no seams
    ctx.drawImage(bitmap(w), 0, 0, Math.round(tw * d.keys.length), Math.round(th * d.queries.length));
    const cap = document.createElement("figcaption");
    cap.textContent = `head ${h}`;
    fig.append(c, cap);
    fig.addEventListener("click", () => pickHead(h));
    return fig;
  });
  box.replaceChildren(...thumbs);
}

function pickHead(h) {
  $("head").value = String(h);
  S.head = h;
  render();
}

function matrixHover(event) {
  if (!S.data || (S.info.mode !== "text" && S.info.mode !== "translation")) return;
  const canvas = $("matrix");
  const r = canvas.getBoundingClientRect();
  const [left, top, cw, ch, rows, cols] = ["left", "top", "cw", "ch", "rows", "cols"].map((k) => Number(canvas.dataset[k]));
  const x = event.clientX - r.left, y = event.clientY - r.top;
  const i = Math.floor((y - top) / ch);
  const j = Math.floor((x - left) / cw);
  if (i < 0 || i >= rows) return;
  if (i !== S.query) showRow(i);
  const col = $("col-highlight");
  if (j >= 0 && j < cols) {
    const v = headMatrix(S.data.weights, S.head)[i][j];
    $("cell-info").textContent = `“${S.data.queries[i]}” → “${S.data.keys[j]}”: ${fmt(v)}`;
    col.hidden = false;
    Object.assign(col.style, {
      left: `${left + j * cw - 1}px`, top: `${top - 2}px`, width: `${cw + 2}px`, height: `${ch * rows + 4}px`,
    });
  } else {
    col.hidden = true;
  }
}

async function lookText(fresh) {
  const text = $("text").value;
  if (fresh) S.query = 0;
  S.request = { text, layer: Number($("layer").value) };
  await run("/api/text", S.request);
}

async function lookTranslation(fresh) {
  const request = { src: $("src").value, kind: $("kind").value, layer: Number($("layer").value) };
  if (!fresh && S.data && S.data.src === request.src) request.tgt = S.data.translation;  // no decoding again
  if (fresh) S.query = 0;
  S.request = request;
  await run("/api/translate", request);
  if (S.data) $("translation").textContent = S.data.translation || "(empty)";
}

// -- images --------------------------------------------------------------------------------
const DISPLAY = 280;  // CSS pixels of the image panels

function loadShown(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not show the image"));
    img.src = url;
  });
}

function drawBase(canvas, img, width = DISPLAY, height = DISPLAY) {
  const ctx = setupCanvas(canvas, width, height);
  ctx.imageSmoothingEnabled = img.width < width / 2 ? false : true;
  ctx.drawImage(img, 0, 0, width, height);
}

// heat: a flat list over a rows x cols grid of tokens, each covering `span` image pixels
function drawHeat(canvas, heat, rows, cols, span, size, lo, hi) {
  const ctx = setupCanvas(canvas, DISPLAY, DISPLAY);
  const px = (DISPLAY * span) / size;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, DISPLAY, DISPLAY);
  ctx.clip();
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = heat[r * cols + c];
      if (v === null || v === undefined) continue;
      ctx.fillStyle = css(INFERNO[level(v, lo, hi)]);
      ctx.fillRect(Math.round(c * px), Math.round(r * px), Math.round((c + 1) * px) - Math.round(c * px),
                   Math.round((r + 1) * px) - Math.round(r * px));
    }
  }
  ctx.restore();
  Object.assign(canvas.dataset, { rows, cols, px, lo, hi });
}

const range = (values) => {
  const v = values.filter((x) => x !== null && x !== undefined);
  return [Math.min(...v), Math.max(...v)];
};

// the query's attention over the grid, for one head (a number) or the mean of heads
function imageRow(head, query) {
  const d = S.data;
  const heads = head === "mean" ? [...Array(d.kind === "vit" ? d.weights.length : d.windows.length).keys()] : [head];
  const [rows, cols] = d.grid;
  const out = new Array(rows * cols).fill(null);
  for (const h of heads) {
    if (d.kind === "vit") {
      const row = d.weights[h][query];
      for (let k = 0; k < rows * cols; k++) out[k] = (out[k] || 0) + row[k + 1] / heads.length;
    } else {  // swin: the query's window
      const { w, p } = findCell(query);
      const row = d.windows[h][w][p];
      d.cells[w].forEach((cell, k) => {
        if (cell >= 0) out[cell] = (out[cell] || 0) + row[k] / heads.length;
      });
    }
  }
  return out;
}

function findCell(cell) {
  const cells = S.data.cells;
  for (let w = 0; w < cells.length; w++) {
    const p = cells[w].indexOf(cell);
    if (p >= 0) return { w, p };
  }
  return { w: 0, p: 0 };
}

const span = () => S.data.span;  // image pixels covered by one token of the current layer's grid

function queryName(q) {
  const d = S.data;
  if (d.kind === "vit") return q === 0 ? "[CLS]" : `patch ${d.queries[q]}`;
  return `patch ${Math.floor(q / d.grid[1]) + 1},${(q % d.grid[1]) + 1}`;
}

function renderImage() {
  const d = S.data;
  const vit = d.kind === "vit";
  const size = S.info.image.size;
  drawBase($("rollout-image"), S.shown);
  drawBase($("head-map-image"), S.shown);
  if (vit) {
    const flat = d.rollout.flat();
    const [lo, hi] = range(flat);
    drawHeat($("rollout"), flat, d.grid[0], d.grid[1], d.span, size, lo, hi);
    drawLegend($("rollout-legend"), INFERNO, lo, hi, "share of [CLS]'s final state");
    $("rollout-title").textContent = "Attention rollout of [CLS]";
    $("rollout-note").textContent = `Heads fused by ${d.head_fusion}, ${Math.round(d.discard_ratio * 100)}% of the weakest weights dropped; all ${S.info.layers.length} layers.`;
    $("rollout").hidden = false;
  } else {
    $("rollout").hidden = true;
    $("rollout-title").textContent = "The image as the model sees it";
    $("rollout-legend").replaceChildren();
    $("rollout-note").textContent = "No rollout for a Swin: its windows and patch merging change the tokens from " +
      "block to block, so there is no one sequence to follow through every layer. Its window attention is on the right.";
  }
  renderQuery();
  const pred = d.prediction.map(([name, p]) => {
    const row = document.createElement("div");
    row.className = "bar";
    const bar = document.createElement("span");
    bar.style.width = `${Math.round(p * 100)}%`;
    const label = document.createElement("label");
    label.textContent = `${(p * 100).toFixed(1)}%  ${name}`;
    row.append(bar, label);
    return row;
  });
  $("prediction").replaceChildren(...pred);
  $("image-size").textContent = `Uploaded ${d.width}×${d.height}, read at ${size}×${size}` +
    (vit ? `, ${d.grid[0]}×${d.grid[1]} patches of ${S.info.image.patch} px.` :
      `; this block's grid is ${d.grid[0]}×${d.grid[1]} in windows of ${d.window}×${d.window}` +
      (d.shift ? `, shifted by ${d.shift}.` : "."));
  $("image-matrix-panel").hidden = !vit;
  if (vit) {
    const matrix = headMatrix(d.weights, S.head);
    const geo = drawMatrix($("image-matrix"), matrix, d.queries, d.keys, { width: 420, height: 420 });
    $("image-row-highlight").hidden = true;
    drawLegend($("image-matrix-legend"), VIRIDIS, 0, geo.vmax, "attention weight");
    $("image-matrix-title").textContent = `Token × token, layer ${d.layer}, ${S.head === "mean" ? "mean of heads" : "head " + S.head}`;
  }
  rendered();
}

function renderQuery() {
  const d = S.data;
  const size = S.info.image.size;
  const heat = imageRow(S.head, S.query);
  const [lo, hi] = range(heat);
  drawHeat($("head-map"), heat, d.grid[0], d.grid[1], span(), size, lo, hi);
  drawLegend($("head-map-legend"), INFERNO, lo, hi, "attention weight");
  const headName = S.head === "mean" ? "mean of heads" : `head ${S.head}`;
  $("head-map-title").textContent = `Layer ${d.layer}, ${headName}: what ${queryName(S.query)} attends to`;
  $("head-map").dataset.query = S.query;
  $("head-map-caption").textContent = d.kind === "vit" ?
    "Hover a patch to see what it attends to; leave the image for [CLS]." :
    "Hover a patch to see what it attends to inside its window (dashed); leave the image for the centre patch.";
  drawMarks();
  // every head, same query
  const heads = d.kind === "vit" ? d.weights.length : d.windows.length;
  const thumbs = [...Array(heads).keys()].map((h) => {
    const fig = document.createElement("figure");
    fig.className = "thumb" + (h === S.head ? " chosen" : "");
    fig.dataset.head = h;
    const c = document.createElement("canvas");
    const row = imageRow(h, S.query);
    const [a, b] = range(row);
    const ctx = setupCanvas(c, 96, 96);
    ctx.drawImage(S.shown, 0, 0, 96, 96);
    ctx.globalAlpha = Number($("opacity").value);
    const px = (96 * span()) / size;
    row.forEach((v, k) => {
      if (v === null) return;
      ctx.fillStyle = css(INFERNO[level(v, a, b)]);
      const r = Math.floor(k / d.grid[1]), col = k % d.grid[1];
      ctx.fillRect(col * px, r * px, px + 0.5, px + 0.5);
    });
    const cap = document.createElement("figcaption");
    cap.textContent = `head ${h}`;
    fig.append(c, cap);
    fig.addEventListener("click", () => pickHead(h));
    return fig;
  });
  $("image-heads").replaceChildren(...thumbs);
}

function drawMarks() {
  const d = S.data;
  const ctx = setupCanvas($("head-map-marks"), DISPLAY, DISPLAY);
  const px = (DISPLAY * span()) / S.info.image.size;
  const box = (cell, style, width) => {
    const r = Math.floor(cell / d.grid[1]), c = cell % d.grid[1];
    ctx.strokeStyle = style;
    ctx.lineWidth = width;
    ctx.strokeRect(c * px + width / 2, r * px + width / 2, px - width, px - width);
  };
  if (d.kind === "swin") {
    const { w } = findCell(S.query);
    ctx.setLineDash([3, 3]);
    d.cells[w].forEach((cell) => cell >= 0 && box(cell, "rgba(255,255,255,0.7)", 1));
    ctx.setLineDash([]);
    box(S.query, "#00e5ff", 2);
  } else if (S.query > 0) {
    box(S.query - 1, "#00e5ff", 2);
  }
}

function imageHover(event) {
  const d = S.data;
  if (!d) return;
  const r = $("head-map-marks").getBoundingClientRect();
  const px = (DISPLAY * span()) / S.info.image.size;
  const c = Math.floor((event.clientX - r.left) / px), row = Math.floor((event.clientY - r.top) / px);
  if (c < 0 || row < 0 || c >= d.grid[1] || row >= d.grid[0]) return;
  const q = d.kind === "vit" ? 1 + row * d.grid[1] + c : row * d.grid[1] + c;
  if (q !== S.query) {
    S.query = q;
    renderQuery();
  }
}

// hovering a row of the ViT's token x token map makes that token the query of the head map
function imageMatrixHover(event) {
  const d = S.data;
  if (!d || d.kind !== "vit") return;
  const canvas = $("image-matrix");
  const r = canvas.getBoundingClientRect();
  const [left, top, cw, ch, rows] = ["left", "top", "cw", "ch", "rows"].map((k) => Number(canvas.dataset[k]));
  const i = Math.floor((event.clientY - r.top - top) / ch);
  if (i < 0 || i >= rows) return;
  const hl = $("image-row-highlight");
  hl.hidden = false;
  hl.dataset.row = i;
  Object.assign(hl.style, {
    left: `${left - 2}px`, top: `${top + i * ch - 2}px`, width: `${cw * d.keys.length + 4}px`, height: `${ch + 4}px`,
  });
  if (i !== S.query) {
    S.query = i;
    renderQuery();
  }
}

function imageLeave() {
  if (!S.data) return;
  const q = S.data.kind === "vit" ? 0 : centre();
  if (q !== S.query) {
    S.query = q;
    renderQuery();
  }
}
const centre = () => Math.floor(S.data.grid[0] / 2) * S.data.grid[1] + Math.floor(S.data.grid[1] / 2);

async function lookImage(fresh) {
  if (!S.imageURL) return;
  if (S.info.mode === "detection") return lookDetection();
  S.request = {
    image: S.imageURL, layer: Number($("layer").value),
    head_fusion: $("fusion").value, discard_ratio: Number($("discard").value) || 0,
  };
  const before = S.data;
  await run("/api/image", S.request);
  if (S.data !== before) {
    S.shown = await loadShown(S.data.shown);
    if (fresh || S.data.kind === "swin" || !before) S.query = S.data.kind === "vit" ? 0 : centre();
    render();
  }
}

async function readFile(file) {
  if (!file) return;
  if (file.size > 12 * 1024 * 1024) {
    showError(`the file is ${(file.size / 1048576).toFixed(1)} MB; upload an image of at most 12 MB`);
    return;
  }
  S.imageURL = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  await lookImage(true);
}

async function positions() {
  try {
    const p = await call("/api/positions");
    const [g] = p.grid;
    const cell = Math.max(2, Math.floor(360 / (g * g + g)));
    const gap = Math.max(2, cell);
    const side = g * (g * cell + gap) + 24;
    const canvas = $("positions");
    const ctx = setupCanvas(canvas, side, side);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, side, side);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#444";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let r = 0; r < g; r++) {
      for (let c = 0; c < g; c++) {
        const x0 = 24 + c * (g * cell + gap), y0 = 24 + r * (g * cell + gap);
        for (let i = 0; i < g; i++) {
          for (let j = 0; j < g; j++) {
            ctx.fillStyle = css(VIRIDIS[level(p.similarity[r][c][i][j], -1, 1)]);
            ctx.fillRect(x0 + j * cell, y0 + i * cell, cell, cell);
          }
        }
      }
      ctx.fillStyle = "#444";
      ctx.fillText(String(r + 1), 12, 24 + r * (g * cell + gap) + (g * cell) / 2);
      ctx.fillText(String(r + 1), 24 + r * (g * cell + gap) + (g * cell) / 2, 12);
    }
    Object.assign(canvas.dataset, { grid: g, cell, gap });
    drawLegend($("positions-legend"), VIRIDIS, -1, 1, "cosine similarity");
    $("positions-panel").hidden = false;
  } catch (e) {
    $("positions-panel").hidden = true;
  }
}

// -- object detectors (DETR, Deformable DETR) ----------------------------------------------
const DETECT = 400;  // CSS pixels of the longer side of the detection panels

function detectSize() {
  const [w, h] = S.data.read;
  const scale = DETECT / Math.max(w, h);
  return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
}
const classColour = (label) => S.info.image.palette[label % S.info.image.palette.length];
// the detections shown: those scoring at least the threshold (the API sends every one, best first)
const shownDetections = () =>
  S.data.detections.map((_, i) => i).filter((i) => S.data.detections[i].score >= S.threshold);

async function lookDetection() {
  S.request = { image: S.imageURL, threshold: 0 };  // every detection: the threshold is applied here
  const before = S.data;
  await run("/api/image", S.request);
  if (S.data !== before) {
    S.shown = await loadShown(S.data.shown);
    S.selected = null;
    render();
  }
}

function setThreshold(value) {
  const t = Math.max(0, Math.min(1, Number(value)));
  if (!Number.isFinite(t)) return;
  S.threshold = t;
  $("threshold").value = String(t);
  if (document.activeElement !== $("threshold-value")) $("threshold-value").value = String(t);
  if (S.data) renderDetection();
}

function selectDetection(i) {
  S.selected = i;
  renderDetection();
}

function renderDetection() {
  const d = S.data;
  const [W, H] = detectSize();
  const shown = shownDetections();
  if (!shown.includes(S.selected)) S.selected = shown.length ? shown[0] : null;
  drawBase($("detect-image"), S.shown, W, H);
  drawBase($("look-image"), S.shown, W, H);
  drawBoxes(shown, W, H);
  renderDetectionList(shown);
  renderLook(W, H);
  const t = S.threshold.toFixed(2);
  $("detect-title").textContent = `${shown.length} of ${d.detections.length} detections score ≥ ${t}`;
  $("detect-caption").textContent = `Uploaded ${d.width}×${d.height}, read at ${d.read[0]}×${d.read[1]}` +
    (d.grid ? `; the encoder's feature grid is ${d.grid[0]}×${d.grid[1]}.` : ".") +
    (d.detector === "detr" ? " DETR scores each query by its best class (softmax with “no object”)." :
      " Deformable DETR: the best (query, class) pairs, a sigmoid each; one query may give several.");
  $("detections-note").textContent = shown.length ? "" :
    (d.detections.length ? `No detection scores ${t} or more (the best: ${d.detections[0].score.toFixed(3)}); ` +
      "lower the threshold." : "The model found nothing in this image.");
  rendered();
}

function boxPixels(box, W, H) {
  return [box[0] * W, box[1] * H, box[2] * W, box[3] * H];
}

function drawBoxes(shown, W, H) {
  const canvas = $("detect-boxes");
  const ctx = setupCanvas(canvas, W, H);
  ctx.font = "bold 12px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const order = shown.filter((i) => i !== S.selected).reverse();  // the best on top, the chosen above all
  if (S.selected !== null) order.push(S.selected);
  for (const i of order) {
    const det = S.data.detections[i];
    const [x0, y0, x1, y1] = boxPixels(det.box, W, H);
    const colour = classColour(det.label), chosen = i === S.selected;
    ctx.globalAlpha = chosen || S.selected === null ? 1 : 0.7;
    ctx.lineWidth = chosen ? 3 : 1.5;
    ctx.strokeStyle = "rgba(255,255,255,0.8)";
    const halo = ctx.lineWidth / 2 + 0.5;  // a light edge around the box: seen on dark pixels too
    ctx.strokeRect(x0 - halo, y0 - halo, x1 - x0 + 2 * halo, y1 - y0 + 2 * halo);
    ctx.strokeStyle = colour;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const label = `${det.name} ${det.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 6, th = 15;
    const ty = y0 - th >= 0 ? y0 - th : y0;  // above the box, or inside it at the top edge
    const tx = Math.min(Math.max(0, x0 - (chosen ? 1.5 : 0.75)), W - tw);
    ctx.fillStyle = colour;
    ctx.fillRect(tx, ty, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, tx + 3, ty + 2);
  }
  ctx.globalAlpha = 1;
  Object.assign(canvas.dataset, { boxes: shown.length, selected: S.selected === null ? "" : S.selected });
}

function renderDetectionList(shown) {
  const d = S.data;
  const [w, h] = d.read;
  const rows = shown.map((i) => {
    const det = d.detections[i];
    const tr = document.createElement("tr");
    tr.dataset.index = i;
    if (i === S.selected) tr.className = "chosen";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = classColour(det.label);
    const box = det.box.map((v, k) => Math.round(v * (k % 2 ? h : w))).join(", ");
    const cells = [swatch, det.name, det.score.toFixed(3), String(det.query), box].map((content, k) => {
      const td = document.createElement("td");
      if (k >= 2) td.className = "num";
      td.append(content);
      return td;
    });
    tr.append(...cells);
    tr.addEventListener("click", () => selectDetection(i));
    return tr;
  });
  $("detections").tBodies[0].replaceChildren(...rows);
}

// the chosen detection's query: DETR's cross-attention map over the grid, Deformable DETR's points
function renderLook(W, H) {
  const d = S.data, i = S.selected;
  const map = $("look-map"), marks = $("look-marks");
  const ctx = setupCanvas(marks, W, H);
  setupCanvas(map, W, H);
  marks.dataset.points = "0";
  if (i === null) {
    $("look-title").textContent = "What the query looked at";
    $("look-legend").replaceChildren();
    $("look-caption").textContent = "Pick a detection (lower the threshold if none is shown).";
    return;
  }
  const det = d.detections[i];
  const layer = S.info.layers[0];
  $("look-title").textContent = `What query ${det.query} looked at: ${det.name} ${det.score.toFixed(2)}`;
  if (d.detector === "detr") {
    const [lo, hi] = range(d.maps[i].flat());
    drawGridHeat(map, d.maps[i], W, H, lo, hi);
    drawLegend($("look-legend"), INFERNO, lo, hi, "cross-attention weight (mean of heads)");
    $("look-caption").textContent = `The query's cross-attention in the last decoder layer (${layer}), mean of its ` +
      `${S.info.heads[0]} heads, over the ${d.grid[0]}×${d.grid[1]} feature grid stretched over the image ` +
      "(DETR paper, Figure 6); its box is dashed.";
  } else {
    drawPoints(ctx, d.points[i], d.weights[i], W, H, marks);
    const s = d.sampling;
    const hi = Math.max(...d.weights[i]);
    drawLegend($("look-legend"), INFERNO, 0, hi, "attention weight of a sampling point");
    const outside = d.points[i].length - Number(marks.dataset.points);
    $("look-caption").textContent = `The query's sampling points in the last decoder layer (${layer}): ` +
      `${s.levels} levels × ${s.heads} heads × ${s.points} points, sized and coloured by their attention weight ` +
      "(each head's weights sum to 1; Deformable DETR paper, Figure 6); its box is dashed." +
      (outside ? ` ${outside} point${outside > 1 ? "s" : ""} outside the image ${outside > 1 ? "are" : "is"} not drawn.` : "");
  }
  map.hidden = d.detector !== "detr";
  // the box, dashed, under the points
  const [x0, y0, x1, y1] = boxPixels(det.box, W, H);
  ctx.save();
  ctx.globalCompositeOperation = "destination-over";
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = 2;
  ctx.strokeStyle = classColour(det.label);
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  ctx.restore();
}

// an h x w grid of values stretched over W x H CSS pixels
function drawGridHeat(canvas, grid, W, H, lo, hi) {
  const ctx = setupCanvas(canvas, W, H);
  const rows = grid.length, cols = grid[0].length, pw = W / cols, ph = H / rows;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = css(INFERNO[level(grid[r][c], lo, hi)]);
      ctx.fillRect(Math.round(c * pw), Math.round(r * ph), Math.round((c + 1) * pw) - Math.round(c * pw),
                   Math.round((r + 1) * ph) - Math.round(r * ph));
    }
  }
  Object.assign(canvas.dataset, { rows, cols, pw, ph, lo, hi });
}

// sampling points (x, y in [0, 1]) as dots, the heaviest drawn last (on top); those outside are skipped
function drawPoints(ctx, points, weights, W, H, canvas) {
  const hi = Math.max(...weights);
  const order = weights.map((_, k) => k).sort((a, b) => weights[a] - weights[b] || a - b);
  let drawn = 0, last = -1;
  for (const k of order) {
    const [x, y] = points[k];
    if (!(x >= 0 && x <= 1 && y >= 0 && y <= 1)) continue;
    const r = 2 + 6 * Math.sqrt(hi > 0 ? weights[k] / hi : 1);
    // the dot in its colour inside a white and a dark ring: seen on dark and light pixels alike
    for (const [grow, fill] of [[2, "rgba(0,0,0,0.75)"], [1, "#fff"], [0, css(INFERNO[level(weights[k], 0, hi)])]]) {
      ctx.beginPath();
      ctx.arc(x * W, y * H, r + grow, 0, 2 * Math.PI);
      ctx.fillStyle = fill;
      ctx.fill();
    }
    drawn += 1;
    last = k;
  }
  Object.assign(canvas.dataset, { points: drawn, last, hi });
}

function detectionClick(event) {
  if (!S.data) return;
  const [W, H] = detectSize();
  const r = $("detect-boxes").getBoundingClientRect();
  const x = (event.clientX - r.left) / W, y = (event.clientY - r.top) / H;
  let best = null, area = Infinity;
  for (const i of shownDetections()) {  // the smallest box around the click (a box inside another stays reachable)
    const [x0, y0, x1, y1] = S.data.detections[i].box;
    const a = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && a < area) [best, area] = [i, a];
  }
  if (best !== null && best !== S.selected) selectDetection(best);
}

function startDetection() {
  $("threshold-box").hidden = false;
  $("layer-box").hidden = true;
  $("head-box").hidden = true;
  $("threshold").addEventListener("input", (e) => setThreshold(e.target.value));
  $("threshold-value").addEventListener("input", (e) => {
    if (e.target.value !== "" && Number.isFinite(Number(e.target.value))) setThreshold(e.target.value);
  });
  $("threshold-value").addEventListener("change", (e) => { e.target.value = String(S.threshold); });
  $("detect-boxes").addEventListener("click", detectionClick);
  setThreshold($("threshold").value);
}

// -- running a request ----------------------------------------------------------------------
async function run(path, body) {
  busy(true, "running the model…");
  try {
    const answer = await call(path, body);
    S.data = answer;
    showError("");
    for (const id of ["text-view", "image-view", "detect-view"]) $(id).classList.remove("stale");
    busy(false, "");
  } catch (e) {
    showError(e.message);
    for (const id of ["text-view", "image-view", "detect-view"]) $(id).classList.add("stale");  // not this input's
    busy(false, "");
    rendered();
  }
}

function render() {
  if (!S.data) return;
  S.head = $("head").value === "mean" ? "mean" : Number($("head").value);
  if (S.info.mode === "image") renderImage();
  else if (S.info.mode === "detection") renderDetection();
  else renderText();
  $({ image: "image-view", detection: "detect-view" }[S.info.mode] || "text-view").hidden = false;
}

async function relook(fresh) {
  const look = { text: lookText, translation: lookTranslation, image: lookImage, detection: lookImage }[S.info.mode];
  const before = S.data;
  await look(fresh);
  if (S.data !== before && (S.info.mode === "text" || S.info.mode === "translation")) render();
}

// -- start ----------------------------------------------------------------------------------
async function start() {
  let info;
  try {
    info = await call("/api/info");
  } catch (e) {
    showError(`cannot reach the explorer's server: ${e.message}`);
    return;
  }
  S.info = info;
  const params = `${(info.parameters / 1e6).toFixed(info.parameters < 1e6 ? 3 : 1)}M parameters`;
  $("run").textContent = `${info.run} · ${info.model_type} (${info.role}) · ${params}`;
  document.title = `qkv explore · ${info.run}`;
  if (info.mode === "none") {
    $("none").hidden = false;
    $("none").textContent = info.reason;
    rendered();
    return;
  }
  $("controls").hidden = false;
  if (info.mode === "text") {
    $("text-form").hidden = false;
    $("text-limit").textContent = `(at most ${info.max_tokens} tokens)`;
    $("text").value = "To be, or not to be, that is the question.";
    $("text-form").addEventListener("submit", (e) => { e.preventDefault(); relook(true); });
    $("text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); relook(true); }
    });
  } else if (info.mode === "translation") {
    $("translate-form").hidden = false;
    $("kind-box").hidden = false;
    $("src-limit").textContent = `(at most ${info.max_tokens} tokens)`;
    $("src").value = "In the beginning God created the heavens and the earth.";
    $("translate-form").addEventListener("submit", (e) => { e.preventDefault(); relook(true); });
    $("kind").addEventListener("change", () => { fillLayers(false); relook(false); });
  } else {
    $("image-form").hidden = false;
    $("opacity-box").hidden = false;
    const i = info.image;
    $("image-limit").textContent = (info.mode === "detection" ?
      `(read at its own size, shrunk to at most ${i.size} px a side, ` : `(read at ${i.size}×${i.size}, `) +
      `${i.channels === 1 ? "grey" : "RGB"}; at most ${(info.max_pixels / 1e6).toFixed(0)} megapixels)`;
    $("image-file").addEventListener("change", (e) => readFile(e.target.files[0]));
    const drop = $("ask");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
      readFile(e.dataTransfer.files[0]);
    });
    if (info.mode === "detection") startDetection();
    const marks = $("head-map-marks");
    marks.addEventListener("mousemove", imageHover);
    marks.addEventListener("mouseleave", imageLeave);
    $("image-matrix").addEventListener("mousemove", imageMatrixHover);
    $("opacity").addEventListener("input", () => {
      document.querySelectorAll(".overlay").forEach((c) => { c.style.opacity = $("opacity").value; });
      if (S.data && S.info.mode === "image") renderQuery();
    });
    if (i.kind === "vit") {
      $("rollout-options").hidden = false;
      for (const id of ["fusion", "discard"]) $(id).addEventListener("change", () => lookImage(false));
      positions();
    }
  }
  fillLayers(false);
  $("layer").addEventListener("change", () => { fillHeads(); relook(false); });
  $("head").addEventListener("change", () => render());
  $("matrix").addEventListener("mousemove", matrixHover);
  $("matrix").addEventListener("mouseleave", () => { $("col-highlight").hidden = true; });
  if (info.mode === "text" || info.mode === "translation") await relook(true);  // a first example: never empty
  else rendered();
}

start();
