// The playground page: controls -> POST /api/config, frames <- /api/events, drawn on canvases.
// All numbers come from the server (the library computes them); this file only draws.
"use strict";

const $ = (id) => document.getElementById(id);
const playground = (window.playground = { frame: null, frames: 0, data: null, regions: null, options: null, errors: [] });

// ---------- talking to the server ----------
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
  if (message) playground.errors.push(message);
}

// the server's token, handed to this page only (see playground/security.py); every API call
// sends it in a header, which no page on another origin can do without a refused preflight
const TOKEN = document.querySelector('meta[name="playground-token"]')?.content || "";

async function api(path, body) {
  const headers = { "X-Playground-Token": TOKEN };
  const init = body === undefined ? { headers } : {
    method: "POST", body: JSON.stringify(body), headers: { ...headers, "Content-Type": "application/json" },
  };
  const response = await fetch(path, init);
  const record = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(record.error || `${response.status} ${response.statusText}`);
  return record;
}

// ---------- controls ----------
const FIELDS = ["problem", "dataset", "noise", "train_percent", "batch_size", "width", "learning_rate", "regularization",
                "regularization_rate", "seed", "probe_layer", "resolution"];

function fillSelect(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => new Option(labels ? labels[i] : v, v)));
}

function layerKindSelects(kinds) {
  const box = $("layer-kinds");
  box.replaceChildren(...kinds.map((kind, l) => {
    const label = document.createElement("label");
    label.textContent = `layer ${l + 1} `;
    const select = document.createElement("select");
    select.className = "layer-kind";
    select.id = `layer-kind-${l + 1}`;
    fillSelect(select, playground.options.layer_kinds);
    select.value = kind;
    select.addEventListener("change", () => configure());
    label.append(select);
    return label;
  }));
  const probe = $("probe_layer");
  const names = kinds.map((k, l) => `layer ${l + 1} (${k})`).concat(["output (logits)"]);
  fillSelect(probe, names.map((_, i) => String(i + 1)), names);
}

function datasetChoices(problem) {
  const names = problem === "regression" ? playground.options.regression_datasets : playground.options.classification_datasets;
  if ($("dataset").dataset.problem !== problem) {
    fillSelect($("dataset"), names);
    $("dataset").dataset.problem = problem;
  }
  return names;
}

function showConfig(config) {
  datasetChoices(config.problem);
  for (const name of FIELDS) $(name).value = String(config[name]);
  $("depth").value = config.layers.length;
  $("residual").checked = config.residual;
  $("layernorm").checked = config.layernorm;
  $("discretize").checked = config.discretize;
  for (const name of playground.options.features) $(`feature-${name}`).checked = config.features.includes(name);
  layerKindSelects(config.layers);
  $("probe_layer").value = String(config.probe_layer);
}

function readControls() {
  const kinds = [...document.querySelectorAll(".layer-kind")].map((s) => s.value);
  const depth = Number($("depth").value);
  const layers = Array.from({ length: Math.max(depth, 0) }, (_, l) => kinds[l] || kinds[kinds.length - 1] || "relu");
  const fields = { layers: depth >= 0 && depth <= playground.options.max_depth ? layers : $("depth").value,
                   residual: $("residual").checked, layernorm: $("layernorm").checked,
                   discretize: $("discretize").checked,
                   features: playground.options.features.filter((name) => $(`feature-${name}`).checked) };
  for (const name of FIELDS) fields[name] = $(name).value;
  // a new problem type starts on its first dataset (the old one belongs to the other type)
  const names = fields.problem === "regression" ? playground.options.regression_datasets : playground.options.classification_datasets;
  if (!names.includes(fields.dataset)) fields.dataset = names[0];
  if (depth !== kinds.length) fields.probe_layer = String(Math.min(Number(fields.probe_layer), depth + 1) || 1);
  return fields;
}

async function configure(fields) {
  try {
    const result = await api("api/config", fields || readControls());
    showError("");
    history.replaceState(null, "", "?" + result.query);
    showConfig(result.config);
    return true;
  } catch (error) {
    showError(error.message);
    return false;
  }
}

async function control(action) {
  try { await api("api/control", { action }); showError(""); } catch (error) { showError(error.message); }
}

async function upload(file) {
  if (!file) return;
  try {
    const result = await api("api/upload", { name: file.name, csv: await file.text() });
    showError("");
    history.replaceState(null, "", "?" + result.query);
    showConfig(result.config);
  } catch (error) {
    showError(error.message);
  } finally {
    $("csv").value = "";
  }
}

// ---------- drawing the maps ----------
function bytes(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// paint `resolution`² pixels (row 0 is the bottom of the plane) with colour(i) -> [r, g, b], scaled up
function paint(canvas, resolution, colour) {
  const image = new ImageData(resolution, resolution);
  for (let row = 0; row < resolution; row++) {
    for (let col = 0; col < resolution; col++) {
      const rgb = colour(row * resolution + col);
      const at = ((resolution - 1 - row) * resolution + col) * 4;
      image.data[at] = rgb[0]; image.data[at + 1] = rgb[1]; image.data[at + 2] = rgb[2]; image.data[at + 3] = 255;
    }
  }
  const small = document.createElement("canvas");
  small.width = small.height = resolution;
  small.getContext("2d").putImageData(image, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

const classColour = (c) => playground.options.colormaps.tab20[Math.round((((2 * c) % 20) + Math.floor(c / 10)) * 254 / 19)];
const targetColour = (y, range) => {
  const t = Math.max(0, Math.min(1, (y - range[0]) / (range[1] - range[0] || 1)));
  return [31, 119, 180].map((v, k) => Math.round(v + ([255, 127, 14][k] - v) * t));
};
const mix = (rgb, t) => rgb.map((v) => Math.round(255 - (255 - v) * t));

function drawPoints(canvas, frame) {
  const data = playground.data;
  if (!data || data.data_version !== frame.data_version) return;
  const [xmin, xmax, ymin, ymax] = frame.dataset.bounds;
  const context = canvas.getContext("2d");
  const draw = (points, labels, filled) => points.forEach((p, i) => {
    const x = ((p[0] - xmin) / (xmax - xmin)) * canvas.width;
    const y = (1 - (p[1] - ymin) / (ymax - ymin)) * canvas.height;
    context.beginPath();
    context.arc(x, y, 2.6, 0, 2 * Math.PI);
    const rgb = frame.dataset.problem === "regression" ? targetColour(labels[i], frame.dataset.target_range)
      : classColour(labels[i]);
    context.fillStyle = filled ? `rgb(${rgb})` : "#fff";
    context.strokeStyle = filled ? "#fff" : `rgb(${rgb})`;
    context.lineWidth = filled ? 0.8 : 1.6;
    context.fill(); context.stroke();
  });
  draw(data.x_train, data.y_train, true);
  draw(data.x_test, data.y_test, false);
}

// numbers arrive as geometry.io.to_jsonable writes them: non-finite ones as "inf", "-inf", "nan"
const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : typeof v === "string" ? v : Number(v).toPrecision(digits));

function drawMaps(frame) {
  const maps = frame.maps;
  const r = frame.resolution;
  const discrete = frame.config.discretize;
  if (maps.value) {  // regression: the predicted value, blue (low) to orange (high) on the targets' range
    const value = bytes(maps.value.data);
    const low = [31, 119, 180], high = [255, 127, 14];
    const shade = (t) => low.map((v, k) => Math.round(v + (high[k] - v) * t));
    paint($("map-decision"), r, (i) => mix(shade(discrete ? (value[i] >= 127 ? 1 : 0) : value[i] / 254), 0.75));
    $("legend-decision").textContent = `predicted value, ${fmt(maps.value.lo)} (blue) … ${fmt(maps.value.hi)} ` +
      `(orange), the training targets' range` + (discrete ? "; discretized: above / below its middle" : "") +
      `. Points: target value. Axes: ${frame.dataset.axis_labels.join(", ")}`;
  } else {
    const cls = bytes(maps.class.data), confidence = bytes(maps.confidence.data);
    paint($("map-decision"), r, (i) => mix(classColour(cls[i]), discrete ? 0.7 : 0.25 + 0.6 * confidence[i] / 254));
    $("legend-decision").textContent = `${frame.dataset.classes} classes; filled: training, hollow: test; ` +
      (discrete ? "discretized: the decision only" : "paler = less confident") +
      `. Axes: ${frame.dataset.axis_labels.join(", ")}`;
  }
  drawPoints($("map-decision"), frame);

  const viridis = playground.options.colormaps.viridis, magma = playground.options.colormaps.magma;
  const volume = bytes(maps.log_volume.data);
  paint($("map-log_volume"), r, (i) => (volume[i] === 255 ? [40, 40, 40] : viridis[volume[i]]));
  $("legend-log_volume").textContent = `${fmt(maps.log_volume.lo)} … ${fmt(maps.log_volume.hi)} (1st–99th percentile); ` +
    `dark grey: singular (−∞), ${(100 * maps.log_volume.singular_fraction).toFixed(1)}% of the map`;
  const sigma = bytes(maps.sigma_min.data);
  paint($("map-sigma_min"), r, (i) => magma[sigma[i]]);
  $("legend-sigma_min").textContent = `0 (black) … ${fmt(maps.sigma_min.hi)} (99th percentile)`;
  const rank = bytes(maps.rank.data);
  const rankColours = [[33, 33, 33], [255, 167, 38], [102, 187, 106]];
  paint($("map-rank"), r, (i) => rankColours[Math.min(rank[i], 2)]);
  $("legend-rank").textContent = "numerical rank of ∂h/∂x: 0 black, 1 orange, 2 green";
  const layer = frame.config.probe_layer, depth = frame.config.layers.length;
  const name = layer > depth ? "the logits" : `layer ${layer}`;
  $("title-log_volume").textContent = `½ log det g of ${name}`;
  $("title-sigma_min").textContent = `σ_min of ∂h/∂x, ${name}`;
  $("title-rank").textContent = `rank of ∂h/∂x, ${name}`;

  const canvas = $("map-regions");
  const exact = maps.exact_regions, polygons = playground.regions;
  if (exact && exact.count !== null && polygons && polygons.count !== null) {
    drawPolygons(canvas, polygons, frame.dataset.bounds);
    $("legend-regions").textContent = `${polygons.count} linear regions (exact partition of the window)`;
  } else if (!maps.regions) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    $("legend-regions").textContent = "no relu or leaky relu units: nothing piecewise linear to partition";
  } else {
    const ids = bytes(maps.regions.data);
    const cache = {};
    const rgbOf = (id) => cache[id] || (cache[id] = hslToRgb((id * 137.508) % 360, 0.6, 0.45 + 0.1 * (id % 4)));
    paint(canvas, r, (i) => rgbOf(ids[i]));
    $("legend-regions").textContent = `${maps.regions.count} regions meet the ${r}×${r} grid (a lower bound)` +
      (exact ? `; ${exact.reason}` : "");
  }
}

function drawPolygons(canvas, exact, bounds) {
  // the exact regions: polygons in plane coordinates, drawn over the map's window (x right, y up)
  const raw = atob(exact.vertices), buffer = new ArrayBuffer(raw.length), view = new Uint8Array(buffer);
  for (let i = 0; i < raw.length; i++) view[i] = raw.charCodeAt(i);
  const points = new Float32Array(buffer), counts = bytes(exact.counts);
  const [x0, x1, y0, y1] = bounds, w = canvas.width, h = canvas.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, w, h);
  context.lineWidth = 0.5;
  context.strokeStyle = "rgba(255, 255, 255, 0.7)";
  let at = 0;
  for (let region = 0; region < counts.length; region++) {
    const [red, green, blue] = hslToRgb((region * 137.508) % 360, 0.6, 0.45 + 0.1 * (region % 4));
    context.fillStyle = `rgb(${red}, ${green}, ${blue})`;
    context.beginPath();
    for (let v = 0; v < counts[region]; v++, at++) {
      const px = ((points[2 * at] - x0) / (x1 - x0)) * w, py = (1 - (points[2 * at + 1] - y0) / (y1 - y0)) * h;
      if (v === 0) context.moveTo(px, py); else context.lineTo(px, py);
    }
    context.closePath();
    context.fill();
    context.stroke();
  }
}

function hslToRgb(h, s, l) {
  const k = (n) => (n + h / 30) % 12, a = s * Math.min(l, 1 - l);
  const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
  return [f(0), f(8), f(4)].map((v) => Math.round(v * 255));
}

function drawCurves(frame) {
  const canvas = $("curves"), context = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  context.clearRect(0, 0, w, h);
  context.strokeStyle = "#999"; context.strokeRect(pad, 10, w - pad - 10, h - pad - 10);
  const history = frame.history;
  if (history.length < 1) return;
  const steps = history.map((e) => e.step), last = Math.max(...steps, 1);
  const x = (s) => pad + (s / last) * (w - pad - 10);
  const losses = history.map((e) => Math.log10(Math.max(e.loss, 1e-12)));
  const lo = Math.min(...losses), hi = Math.max(...losses, lo + 1e-6);
  const line = (values, y, colour) => {
    context.beginPath(); context.strokeStyle = colour; context.lineWidth = 1.5;
    values.forEach((v, i) => (i ? context.lineTo(x(steps[i]), y(v)) : context.moveTo(x(steps[i]), y(v))));
    context.stroke();
  };
  const top = 10, bottom = h - pad;
  line(losses, (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top), "#000");
  if (history[0].train_mse !== undefined) {  // regression: train and test MSE on the loss's log scale
    const logScale = (v) => bottom - ((Math.log10(Math.max(v, 1e-12)) - lo) / (hi - lo)) * (bottom - top);
    line(history.map((e) => e.train_mse), logScale, "#1f77b4");
    line(history.map((e) => e.test_mse), logScale, "#ff7f0e");
  } else {
    const accuracy = (v) => bottom - v * (bottom - top);
    line(history.map((e) => e.train_accuracy), accuracy, "#1f77b4");
    line(history.map((e) => e.test_accuracy), accuracy, "#ff7f0e");
  }
  $("legend-curves").textContent = history[0].train_mse !== undefined
    ? "loss (black), train MSE (blue), test MSE (orange): one log scale" : "loss (log scale, black); accuracy: train (blue), test (orange)";
  context.fillStyle = "#333"; context.font = "11px sans-serif";
  context.fillText(`step ${last}`, w - 70, h - 10);
  context.fillText(`loss 1e${hi.toFixed(1)}`, pad + 2, 22);
  context.fillText(`1e${lo.toFixed(1)}`, pad + 2, bottom - 4);
}

function drawTable(frame) {
  const body = $("layers-table").tBodies[0];
  body.replaceChildren(...(frame.layers || []).map((row) => {
    const tr = document.createElement("tr");
    const cells = [row.layer, row.kind, row.rank, fmt(row.effective_rank), fmt(row.jacobian_rank),
                   row.dead_units ?? "–", row.saturated === null ? "–" : `${(100 * row.saturated).toFixed(1)}%`,
                   fmt(row.cka_input), fmt(row.cka_previous), row.dead_units_grid ?? "–", row.saturated_units_grid ?? "–"];
    tr.replaceChildren(...cells.map((c) => Object.assign(document.createElement("td"), { textContent: String(c) })));
    return tr;
  }));
  const linear = frame.linear_collapse;
  $("linear-collapse").textContent = linear.rank === null ? `W_total: ${linear.note}.` :
    `Without activations: W_total = W_out W_L ⋯ W_1 is ${linear.shape.join("×")} with rank ${linear.rank} ` +
    `(singular values ${linear.singular_values.map((s) => fmt(s)).join(", ")}): ${linear.note}.`;
}

function drawStatus(frame) {
  const h = frame.history[frame.history.length - 1];
  const rate = frame.updates_per_second ? `${frame.updates_per_second.toFixed(1)} updates/s` : "";
  const score = !h ? "" : h.train_mse !== undefined ? ` · train MSE ${fmt(h.train_mse)} · test MSE ${fmt(h.test_mse)}`
    : ` · train ${(100 * h.train_accuracy).toFixed(1)}% · test ${(100 * h.test_accuracy).toFixed(1)}%`;
  $("status").textContent = `${frame.status} · step ${frame.step}` + (h ? ` · loss ${fmt(h.loss)}${score}` : "") +
    (h ? ` · ‖W‖ ${fmt(h.weight_norm)}` : "") + ` · ${rate}`;
  for (const action of ["start", "pause"]) $(action).classList.toggle("active", (action === "start") === (frame.status === "running"));
  if (frame.message) showError(frame.message);
}

async function render(frame) {
  if (!playground.data || playground.data.data_version !== frame.data_version) {
    playground.data = await api("api/data");
  }
  const exact = frame.maps && frame.maps.exact_regions;
  if (exact && exact.count !== null && (!playground.regions || playground.regions.version < exact.version)) {
    playground.regions = await api("api/regions");  // the polygons, only when a new partition was computed
  }
  drawStatus(frame);
  if (frame.maps) drawMaps(frame);
  drawCurves(frame);
  drawTable(frame);
  if (frame.network) drawNetwork(frame);
  drawGeometryHistory(frame);
  playground.frame = frame;  // the frame now on screen (tests wait on it)
  playground.frames += 1;
}

// ---------- the network, unit by unit ----------
const featureLabel = (name) => name.replace("sq", "²").replace("sin", "sin ");

const MARK_COLOURS = { live: "#43a047", saturated: "#fb8c00", dead: "#e53935", kernel: "#90a4ae" };

function unitImage(map, unit, grid, colours) {
  // one unit's small map (codes 0..254, row 0 at the bottom) as a canvas of grid × grid pixels
  const codes = bytes(map.data).subarray(unit * grid * grid, (unit + 1) * grid * grid);
  const small = document.createElement("canvas");
  small.width = small.height = grid;
  const image = new ImageData(grid, grid);
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const rgb = colours[codes[row * grid + col]], at = ((grid - 1 - row) * grid + col) * 4;
      image.data[at] = rgb[0]; image.data[at + 1] = rgb[1]; image.data[at + 2] = rgb[2]; image.data[at + 3] = 255;
    }
  }
  small.getContext("2d").putImageData(image, 0, 0);
  return small;
}

function matrix(encoded) {
  // a base64 little-endian float32 matrix (shape [rows, columns]) as an array of rows
  if (!encoded) return null;
  const raw = atob(encoded.data), buffer = new ArrayBuffer(raw.length), view = new Uint8Array(buffer);
  for (let i = 0; i < raw.length; i++) view[i] = raw.charCodeAt(i);
  const values = new Float32Array(buffer), [rows, columns] = encoded.shape;
  return Array.from({ length: rows }, (_, r) => Array.from(values.subarray(r * columns, (r + 1) * columns)));
}

function drawNetwork(frame) {
  const view = frame.network, canvas = $("network-canvas"), context = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, viridis = playground.options.colormaps.viridis;
  context.clearRect(0, 0, w, h);
  // columns: the features, each hidden layer, the outputs
  const columns = [view.features.map((name) => ({ label: featureLabel(name) })),
    ...view.layers.map((layer, l) => Array.from({ length: Math.min(layer.units, view.drawn_units) },
      (_, u) => ({ layer: l, unit: u, mark: layer.marks[u] }))),
    Array.from({ length: view.readout.shape[0] }, (_, k) => ({ label: view.readout.shape[0] === 1 ? "output" : `class ${k}` }))];
  const gap = w / columns.length, top = 16;
  const size = Math.max(6, Math.min(30, (h - top - 10) / Math.max(...columns.map((c) => c.length)) - 3));
  const position = columns.map((column, c) => column.map((_, i) => [gap * (c + 0.5), top + (i + 0.5) * (h - top) / column.length]));
  const matrices = [...view.layers.map((layer) => matrix(layer.weights)), matrix(view.readout)];
  for (let c = 0; c < matrices.length; c++) {  // edges into column c + 1
    const weights = matrices[c];
    if (!weights) continue;  // a kernel layer: no weight matrix
    const biggest = Math.max(...weights.flat().map(Math.abs), 1e-12);
    weights.forEach((row, j) => row.forEach((value, i) => {
      const a = position[c][i], b = position[c + 1][j];
      context.strokeStyle = value >= 0 ? "rgba(31, 119, 180, 0.55)" : "rgba(255, 127, 14, 0.55)";
      context.lineWidth = 0.2 + 2.8 * Math.abs(value) / biggest;
      context.beginPath(); context.moveTo(a[0] + size / 2, a[1]); context.lineTo(b[0] - size / 2, b[1]); context.stroke();
    }));
  }
  playground.units = [];
  context.font = "10px sans-serif";
  columns.forEach((column, c) => column.forEach((node, i) => {
    const [x, y] = position[c][i];
    if (node.label !== undefined) {
      context.fillStyle = "#eceff1"; context.fillRect(x - size / 2, y - size / 2, size, size);
      context.fillStyle = "#333"; context.fillText(node.label, x - size / 2 - 2, y - size / 2 - 2);
      return;
    }
    const layer = view.layers[node.layer];
    if (node.unit < layer.activation.lo.length) {
      context.imageSmoothingEnabled = false;
      context.drawImage(unitImage(layer.activation, node.unit, view.grid, viridis), x - size / 2, y - size / 2, size, size);
    }
    context.strokeStyle = MARK_COLOURS[node.mark]; context.lineWidth = 2;
    context.strokeRect(x - size / 2, y - size / 2, size, size);
    playground.units.push({ layer: node.layer, unit: node.unit, mark: node.mark, x, y, size });
  }));
  (frame.layers || []).forEach((row, l) => {  // the rank of ∂h/∂x beside each hidden column
    context.fillStyle = "#333";
    context.fillText(`rank J ${fmt(row.jacobian_rank)}`, gap * (l + 1.5) - 28, 11);
  });
  if (playground.selectedUnit) showUnit(playground.selectedUnit);
}

function unitAt(event) {
  const box = $("network-canvas").getBoundingClientRect();
  const x = (event.clientX - box.left) * $("network-canvas").width / box.width;
  const y = (event.clientY - box.top) * $("network-canvas").height / box.height;
  return (playground.units || []).find((u) => Math.abs(x - u.x) <= u.size / 2 + 1 && Math.abs(y - u.y) <= u.size / 2 + 1);
}

function showUnit(target) {
  const frame = playground.frame, view = frame && frame.network;
  if (!view || !view.layers[target.layer] || target.unit >= view.layers[target.layer].units) return;
  const layer = view.layers[target.layer], grid = view.grid;
  const draw = (canvas, map, colours) => {
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (!map || target.unit >= map.lo.length) return;
    context.imageSmoothingEnabled = false;
    context.drawImage(unitImage(map, target.unit, grid, colours), 0, 0, canvas.width, canvas.height);
  };
  draw($("unit-activation"), layer.activation, playground.options.colormaps.viridis);
  draw($("unit-derivative"), layer.derivative, playground.options.colormaps.magma);
  const mark = layer.marks[target.unit];
  $("unit-title").textContent = `layer ${target.layer + 1}, unit ${target.unit + 1}: ${mark}`;
  const range = (map) => (map && target.unit < map.lo.length ? `${fmt(map.lo[target.unit])} … ${fmt(map.hi[target.unit])}` : "–");
  $("unit-legend").textContent = `left: activation h (${range(layer.activation)}); right: φ′ (${range(layer.derivative)})`;
  playground.shownUnit = { ...target, mark };
}

// ---------- geometry against training step ----------
const GEOMETRY_METRICS = { rank: "rank H", effective_rank: "effective rank H", jacobian_rank: "rank J (mean)",
  dead_units_grid: "dead units (grid)", saturated_units_grid: "saturated units (grid)", cka_input: "CKA to the input",
  cka_previous: "CKA to the previous layer" };

function drawGeometryHistory(frame) {
  const canvas = $("geometry-history"), context = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  if (frame.geometry_history) playground.geometry = frame.geometry_history;  // sent only when it changed
  const key = $("geometry-metric").value, history = playground.geometry || [];
  context.clearRect(0, 0, w, h);
  const pad = 36, top = 10, bottom = h - 22;
  context.strokeStyle = "#999"; context.strokeRect(pad, top, w - pad - 10, bottom - top);
  const values = history.flatMap((e) => e.layers.map((row) => row[key])).filter((v) => typeof v === "number");
  if (!values.length) { $("geometry-legend").textContent = "no values yet"; return; }
  const steps = history.map((e) => e.step), first = Math.min(...steps), last = Math.max(...steps, first + 1);
  const lo = Math.min(0, ...values), hi = Math.max(...values, lo + 1e-9);
  const x = (s) => pad + ((s - first) / (last - first)) * (w - pad - 10);
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  const layers = Math.max(...history.map((e) => e.layers.length));
  for (let l = 0; l < layers; l++) {
    const [red, green, blue] = hslToRgb((l * 360) / Math.max(layers, 1), 0.65, 0.45);
    context.strokeStyle = `rgb(${red}, ${green}, ${blue})`; context.lineWidth = 1.5; context.beginPath();
    let started = false;
    history.forEach((e) => {
      const v = e.layers[l] && e.layers[l][key];
      if (typeof v !== "number") { started = false; return; }
      if (started) context.lineTo(x(e.step), y(v)); else context.moveTo(x(e.step), y(v));
      started = true;
    });
    context.stroke();
    context.fillStyle = context.strokeStyle;
    context.fillText(`layer ${l + 1}`, pad + 6 + 52 * l, top + 12);
  }
  context.fillStyle = "#333";
  context.fillText(fmt(hi), 2, top + 8); context.fillText(fmt(lo), 2, bottom);
  context.fillText(`step ${first}`, pad, h - 6); context.fillText(`step ${last}`, w - 70, h - 6);
  $("geometry-legend").textContent = `${GEOMETRY_METRICS[key]} per layer, recorded with every per-layer table ` +
    `(${history.length} records; change L2 or the width and watch it move)`;
}

// ---------- the PNG export: every panel with its title, on one canvas ----------
function exportView() {
  const figures = [...document.querySelectorAll("#panels figure")];
  const size = 300, title = 22, columns = 3;
  const out = document.createElement("canvas");
  out.width = columns * size; out.height = Math.ceil(figures.length / columns) * (size + title);
  const context = out.getContext("2d");
  context.fillStyle = "#fff"; context.fillRect(0, 0, out.width, out.height);
  context.fillStyle = "#222"; context.font = "13px sans-serif";
  figures.forEach((figure, i) => {
    const x = (i % columns) * size, y = Math.floor(i / columns) * (size + title);
    context.fillText(figure.querySelector("figcaption").textContent, x + 4, y + 15);
    context.drawImage(figure.querySelector("canvas"), x, y + title, size, size);
  });
  const link = Object.assign(document.createElement("a"), { href: out.toDataURL("image/png"), download: "playground-view.png" });
  document.body.append(link); link.click(); link.remove();
}

// ---------- the grid-and-disk widget ----------
const warp = { activation: "relu", busy: false, again: false };

async function updateWarp() {
  if (warp.busy) { warp.again = true; return; }
  warp.busy = true;
  const angle = $("warp-angle").value;
  $("warp-angle-value").textContent = `${angle}°`;
  try {
    const view = await api(`api/warp?activation=${warp.activation}&angle=${angle}`);
    drawWarp(view);
  } catch (error) {
    showError(error.message);
  } finally {
    warp.busy = false;
    if (warp.again) { warp.again = false; updateWarp(); }
  }
}

function drawWarp(view) {
  const canvas = $("warp-canvas"), context = canvas.getContext("2d"), w = canvas.width;
  const to = (p) => [((p[0] + 1.6) / 3.2) * w, (1 - (p[1] + 1.6) / 3.2) * w];
  context.fillStyle = "#fff"; context.fillRect(0, 0, w, w);
  context.strokeStyle = "#e0e0e0"; context.lineWidth = 1;  // the output axes and the box [−1.6, 1.6]²
  context.strokeRect(0.5, 0.5, w - 1, w - 1);
  context.beginPath(); context.moveTo(...to([-1.6, 0])); context.lineTo(...to([1.6, 0]));
  context.moveTo(...to([0, -1.6])); context.lineTo(...to([0, 1.6])); context.stroke();
  context.strokeStyle = "#bbb"; context.lineWidth = 0.7;
  for (const line of view.lines) {
    context.beginPath();
    line.forEach((p, i) => (i ? context.lineTo(...to(p)) : context.moveTo(...to(p))));
    context.stroke();
  }
  view.disk.forEach((p, i) => {
    context.fillStyle = `hsl(${view.hue[i] * 360},80%,50%)`;
    const [x, y] = to(p);
    context.fillRect(x - 1.2, y - 1.2, 2.4, 2.4);
  });
  $("warp-numbers").textContent = `folded (rank J < 2): ${view.folded.toFixed(3)} of the disk (theory ${view.theory_folded.toFixed(3)}); ` +
    `orientation reversed: ${view.orientation_reversed.toFixed(3)} (theory ${view.theory_orientation_reversed.toFixed(3)})`;
  $("warp-numbers").title = "measured on a 151² grid inside the disk; theory: experiments/grid_warp.py";
  playground.warp = view;
}

// ---------- start ----------
async function main() {
  playground.options = await api("api/options");
  fillSelect($("problem"), playground.options.problems);
  fillSelect($("regularization"), playground.options.regularizations);
  datasetChoices("classification");
  fillSelect($("resolution"), playground.options.resolutions.map(String));
  $("batch_size").max = playground.options.max_batch;
  $("features").replaceChildren(...playground.options.features.map((name) => {
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", id: `feature-${name}` });
    box.addEventListener("change", () => configure());
    label.append(box, featureLabel(name));
    return label;
  }));
  fillSelect($("geometry-metric"), Object.keys(GEOMETRY_METRICS), Object.values(GEOMETRY_METRICS));
  $("geometry-metric").addEventListener("change", () => playground.frame && drawGeometryHistory(playground.frame));
  $("network-canvas").addEventListener("mousemove", (event) => { const u = unitAt(event); if (u) showUnit(u); });
  $("network-canvas").addEventListener("click", (event) => {
    const u = unitAt(event);
    playground.selectedUnit = u ? { layer: u.layer, unit: u.unit } : null;
    if (u) showUnit(u);
  });
  $("depth").max = playground.options.max_depth;
  $("width").max = playground.options.max_width;
  for (const name of FIELDS) $(name).addEventListener("change", () => configure());
  for (const name of ["depth", "residual", "layernorm", "discretize"]) $(name).addEventListener("change", () => configure());
  for (const action of ["start", "pause", "step", "reset"]) $(action).addEventListener("click", () => control(action));
  $("csv").addEventListener("change", (event) => upload(event.target.files[0]));
  $("export-view").addEventListener("click", exportView);

  $("warp-activations").replaceChildren(...playground.options.warp_activations.map((name) => {
    const button = Object.assign(document.createElement("button"), { textContent: name, id: `warp-${name}` });
    button.addEventListener("click", () => {
      warp.activation = name;
      document.querySelectorAll("#warp-activations button").forEach((b) => b.classList.toggle("active", b === button));
      updateWarp();
    });
    return button;
  }));
  $("warp-relu").classList.add("active");
  $("warp-angle").addEventListener("input", updateWarp);
  updateWarp();

  const query = new URLSearchParams(location.search);
  if (query.has("token")) {  // the cookie the server set holds it from now on: keep it out of shared links
    query.delete("token");
    history.replaceState(null, "", [...query.keys()].length ? "?" + query : location.pathname);
  }
  // a link's settings, or (none given, or refused: the message stays up) the net the server runs
  if (![...query.keys()].length || !(await configure(Object.fromEntries(query.entries())))) {
    const frame = await api("api/frame");
    showConfig(frame.config);
    if (![...query.keys()].length) history.replaceState(null, "", "?" + frame.query);
  }
  const events = new EventSource("api/events");
  events.onmessage = (event) => render(JSON.parse(event.data)).catch((error) => showError(error.message));
  events.onerror = () => { $("status").textContent = "connection lost; retrying…"; };
}

main().catch((error) => showError(error.message));
