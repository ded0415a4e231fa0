// The page: wires the form to the Model and exposes window.dcclip, the small API the parity tests drive.
import { Model, splitLabels } from "./dcclip.js";
import { decodeImage } from "./decode.js";
import { preprocess, resizeRGB } from "./preprocess.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const threads = Number(params.get("threads") ?? 1); // 1: works without cross-origin isolation; 0: onnxruntime's default
let model = null;
const added = []; // images classified on this page join the search set: {url, embedding}

async function load(precision) {
  $("status").textContent = "Loading the model…";
  model = await Model.load(".", { precision, threads });
  $("status").textContent = `Ready: ${model.precision}, ${threads || "default"} thread(s), languages ${model.languages.join(", ") || "any"}.`;
  return model;
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => new Option(v, v, v === chosen, v === chosen)));
}

function row(url, text) {
  const li = document.createElement("li");
  const img = document.createElement("img");
  img.src = url;
  img.alt = "";
  li.append(img, text);
  return li;
}

async function classifyFiles(files) {
  const labels = splitLabels($("labels").value);
  if (!labels.length) {
    $("status").textContent = "Type at least one label (comma-separated).";
    return;
  }
  const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
  const embeddings = await model.embedImages(images);
  const results = await model.classifyEmbeddings(embeddings, labels, $("lang").value, 3);
  images.forEach((file, i) => {
    const url = URL.createObjectURL(file);
    added.push({ url, embedding: embeddings[i] });
    const text = results[i].map((r) => `${r.label} ${(100 * r.probability).toFixed(1)}%`).join(" · ");
    $("results").append(row(url, text));
  });
}

async function runSearch() {
  const hits = await model.search($("query").value, added, 12);
  $("hits").replaceChildren(...hits.map((h) => row(h.url, h.score.toFixed(3))));
}

async function main() {
  await load(null);
  const config = model.config;
  fillSelect($("lang"), model.languages.length ? model.languages : Object.keys(config.templates), model.languages[0] || "en");
  fillSelect($("precision"), config.precisions, model.precision);
  $("labels").value = config.example_labels || "";
  $("precision").addEventListener("change", (e) => load(e.target.value));
  $("files").addEventListener("change", (e) => classifyFiles(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classifyFiles(e.dataTransfer.files); });
  $("go").addEventListener("click", runSearch);
  $("search-note").textContent = config.index
    ? `${config.index.names.length} images exported with the page, plus the images you classify here.`
    : "No image set was exported with this page: the images you classify here are searched.";
}

// The test API: the parity tests compare these against dcclip.runtime on the same inputs.
window.dcclip = {
  ready: main().then(() => true, (error) => { $("status").textContent = `Error: ${error.message}`; throw error; }),
  load: async (precision, n) => { model = await Model.load(".", { precision, threads: n ?? threads }); return model.precision; },
  tokenize: (texts) => model.tokenize(texts).ids,
  embedTexts: async (texts) => (await model.embedTexts(texts)).map((e) => Array.from(e)),
  embedImages: async (urls) => (await model.embedImages(urls)).map((e) => Array.from(e)),
  pixels: async (url) => Array.from(await model.pixels(url)),
  preprocessRaw: (width, height, rgb, pre) => Array.from(preprocess({ width, height, data: Uint8Array.from(rgb) }, pre)),
  resizeRaw: (width, height, rgb, ow, oh, interpolation) =>
    Array.from(resizeRGB({ width, height, data: Uint8Array.from(rgb) }, ow, oh, interpolation, model.config.resample_order).data),
  decode: async (url) => { const im = await decodeImage(await (await fetch(url)).blob()); return [im.width, im.height, Array.from(im.data)]; },
  classify: async (urls, labels, lang, topK) => model.classify(urls, labels, lang, topK),
  classEmbeddings: async (labels, lang) => (await model.classEmbeddings(labels, lang)).map((e) => Array.from(e)),
  search: (query) => model.search(query, added),
  time: async (kind, items, repeats) => {
    const runs = {
      image: () => model.embedImages(items),
      pixels: async () => { for (const url of items) await model.pixels(url); },
      text: () => model.embedTexts(items),
    };
    const run = runs[kind];
    await run();
    const times = [];
    for (let i = 0; i < repeats; i++) { const t = performance.now(); await run(); times.push(performance.now() - t); }
    return times;
  },
};
