// The bundle's model in the browser with onnxruntime-web (WebAssembly; its files in ort/, found beside its script).
// window.predictRows(rows) -> [{label, probabilities}] scores rows of raw feature values (null or NaN: missing).
/* global ort */

ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server does not give

const $ = (id) => document.getElementById(id);
const fail = (error) => Object.assign($("status"), { className: "error",
  textContent: `the model could not run here: ${error?.message ?? error}` });
window.addEventListener("error", (e) => fail(e.error ?? e.message));
window.addEventListener("unhandledrejection", (e) => fail(e.reason));
const getJson = async (name) => {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.json();
};

const [edge, card, labels] = await Promise.all(["edge.json", "model_card.json", "labels.json"].map(getJson));
const session = await ort.InferenceSession.create(edge.model, { executionProviders: ["wasm"] });
const width = card.features.length;
const [low, high] = [card.feature_min, card.feature_max];

async function predictRows(rows) {
  const data = Float32Array.from(rows.flat(), (v) => (v === null || v === "" ? NaN : Number(v)));
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, [rows.length, width]) };
  const output = (await session.run(feeds))[session.outputNames[0]].data;
  return rows.map((_, i) => {
    const probabilities = Array.from(output.subarray(i * labels.length, (i + 1) * labels.length));
    return { label: labels[probabilities.indexOf(Math.max(...probabilities))], probabilities };
  });
}

function show([answer]) {
  $("label").textContent = String(answer.label);
  const top = Math.max(...answer.probabilities);
  $("probabilities").replaceChildren(...answer.probabilities.map((p, i) => {
    const bar = document.createElement("div");
    bar.className = p === top ? "bar top" : "bar";
    bar.innerHTML = "<span></span><span><i></i></span><span></span>";
    bar.children[0].textContent = String(labels[i]);
    bar.children[1].firstChild.style.width = `${(100 * p).toFixed(1)}%`;
    bar.children[2].textContent = `${(100 * p).toFixed(1)}%`;
    return bar;
  }));
}

async function answer(row) {
  window.lastInput = row;
  show(await predictRows([row]));
}

function padInput(side) {
  const pad = $("pad"), seen = $("seen"), view = seen.getContext("2d");
  const ink = pad.getContext("2d", { willReadFrequently: true });
  const cell = pad.width / side;
  seen.width = seen.height = side;
  const clear = () => { ink.fillStyle = "#fff"; ink.fillRect(0, 0, pad.width, pad.height); };
  // the drawing scaled to fill the grid (its aspect kept, centred), as scanned digits are normalised, then each
  // cell's share of ink in the training range: what a pixel of the training data holds
  const fitted = Object.assign(document.createElement("canvas"), { width: pad.width, height: pad.height });
  const fit = fitted.getContext("2d", { willReadFrequently: true });
  const inkBox = (pixels) => {
    let [x0, y0, x1, y1] = [pad.width, pad.height, -1, -1];
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] === 255) continue;
      const [x, y] = [(i / 4) % pad.width, Math.floor(i / 4 / pad.width)];
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    }
    return x1 < 0 ? null : [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
  };
  const grid = () => {
    fit.fillStyle = "#fff";
    fit.fillRect(0, 0, pad.width, pad.height);
    const box = inkBox(ink.getImageData(0, 0, pad.width, pad.height).data);
    if (box) {
      const scale = pad.width / Math.max(box[2], box[3]);
      const [w, h] = [box[2] * scale, box[3] * scale];
      fit.drawImage(pad, ...box, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    }
    const pixels = fit.getImageData(0, 0, pad.width, pad.height).data;
    const row = new Array(side * side).fill(0);
    for (let y = 0; y < pad.height; y++) {
      for (let x = 0; x < pad.width; x++) {
        row[Math.floor(y / cell) * side + Math.floor(x / cell)] += 1 - pixels[4 * (y * pad.width + x)] / 255;
      }
    }
    return row.map((v) => low + (high - low) * v / (cell * cell));
  };
  const submit = () => {
    const row = grid();
    view.putImageData(new ImageData(Uint8ClampedArray.from(row.flatMap((v) => {
      const g = 255 - Math.round(255 * (v - low) / (high - low));
      return [g, g, g, 255];
    })), side, side), 0, 0);
    return answer(row);
  };
  let last = null;
  pad.addEventListener("pointerdown", (e) => { last = [e.offsetX, e.offsetY]; pad.setPointerCapture(e.pointerId); });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    Object.assign(ink, { strokeStyle: "#000", lineWidth: cell * 1.3, lineCap: "round", lineJoin: "round" });
    ink.beginPath();
    ink.moveTo(...last);
    ink.lineTo(e.offsetX, e.offsetY);
    ink.stroke();
    last = [e.offsetX, e.offsetY];
  });
  pad.addEventListener("pointerup", () => { last = null; submit(); });
  $("clear").addEventListener("click", () => { clear(); submit(); });
  clear();
  $("pad-input").hidden = false;
}

function formInput() {
  const form = $("form");
  card.features.forEach((name, i) => {
    const label = document.createElement("label");
    label.textContent = name;
    const input = Object.assign(document.createElement("input"), { type: "number", step: "any", name, min: low,
      max: high, title: `training range ${low} to ${high}` });
    input.value = card.feature_mean?.[i] !== undefined ? +card.feature_mean[i].toPrecision(4) : "";
    label.append(input);
    form.append(label);
  });
  const submit = () => answer(Array.from(form.elements, (input) => (input.value === "" ? null : input.value)));
  $("predict").addEventListener("click", submit);
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  form.hidden = $("form-buttons").hidden = false;
}

$("title").textContent = `${card.model_name} v${card.model_version}`;
$("about").textContent = `${width} features, ${labels.length} labels; test accuracy ` +
  `${(100 * card.test_accuracy).toFixed(1)}% (${card.variant}); onnxruntime-web ${ort.env.versions.web}`;
if (edge.input.kind === "pixels" && new URLSearchParams(location.search).get("input") !== "form") {
  padInput(edge.input.side);
} else {
  formInput();
}
$("input").hidden = false;
window.predictRows = predictRows;
document.body.dataset.ready = "true";
