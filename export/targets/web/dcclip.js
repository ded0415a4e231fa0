// The bundle in the browser: onnxruntime-web runs both towers, tokenizers.js reads the bundle's tokenizer.json, and
// the maths of dcclip.runtime (truncation, prompt ensembling, logit scale, softmax) is reproduced step for step.
// Everything is loaded from this page's own origin; no image or text leaves the device.

import * as ort from "./vendor/ort.wasm.min.mjs";
import { Tokenizer } from "./vendor/tokenizers.min.mjs";
import { decodeImage } from "./decode.js";
import { preprocess } from "./preprocess.js";

const MAX_BATCH = 32; // dcclip.runtime.bundle.DEFAULT_MAX_BATCH

async function fetchJSON(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function towerFile(manifest, role, precision) {
  for (const [name, entry] of Object.entries(manifest.files)) {
    if (entry.role === role && entry.precision === precision) return name;
  }
  throw new Error(`the bundle has no ${precision} ${role} tower (precisions: ${manifest.precisions})`);
}

// Which trailing token the post-processor adds: truncation keeps it, as dcclip.runtime.tokenizer._truncate does.
function addsTrailingSpecial(withSpecial, plain) {
  if (withSpecial.length <= plain.length) return false;
  for (let start = 0; start + plain.length <= withSpecial.length; start++) {
    if (plain.every((id, i) => withSpecial[start + i] === id)) return start + plain.length < withSpecial.length;
  }
  return false;
}

export function l2normalize(vector) {
  let sum = 0;
  for (const v of vector) sum += v * v;
  const norm = Math.max(Math.fround(Math.sqrt(sum)), 1e-12);
  return Float32Array.from(vector, (v) => v / norm);
}

export function softmax(logits) {
  const top = Math.max(...logits);
  const exp = logits.map((v) => Math.exp(v - top));
  const total = exp.reduce((a, b) => a + b, 0);
  return exp.map((v) => v / total);
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// Labels typed as `dcclip classify --labels` takes them: comma-separated, blanks trimmed, empty items dropped.
export function splitLabels(text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

export class Model {
  static async load(root = ".", { precision = null, threads = 1 } = {}) {
    const config = await fetchJSON(`${root}/config.json`);
    const manifest = await fetchJSON(`${root}/model/manifest.json`);
    const tokenizerJSON = await fetchJSON(`${root}/model/tokenizer.json`);
    ort.env.wasm.wasmPaths = new URL(`${root}/vendor/`, document.baseURI).href;
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.proxy = false;
    const chosen = precision || config.default_precision;
    const session = (role) => ort.InferenceSession.create(`${root}/model/${towerFile(manifest, role, chosen)}`, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    const [image, text] = await Promise.all([session("image"), session("text")]);
    return new Model(config, manifest, new Tokenizer(tokenizerJSON, {}), image, text, chosen, root);
  }

  constructor(config, manifest, tokenizer, imageSession, textSession, precision, root) {
    Object.assign(this, { config, manifest, tokenizer, imageSession, textSession, precision, root });
    this.pre = { ...manifest.image_preprocess, resample_order: config.resample_order };
    this.maxLength = manifest.text_max_length;
    this.padId = config.pad_id;
    this.classCache = new Map();
    this.index = null;
  }

  get languages() {
    return this.manifest.languages || [];
  }

  // Token ids of one text, truncated like the Python runtime (a trailing special token survives truncation).
  encode(text) {
    const ids = this.tokenizer.encode(text, { add_special_tokens: true }).ids;
    if (ids.length <= this.maxLength) return ids;
    const plain = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    if (addsTrailingSpecial(ids, plain) && this.maxLength >= 2) return [...ids.slice(0, this.maxLength - 1), ids.at(-1)];
    return ids.slice(0, this.maxLength);
  }

  // Right-padded ids and mask of a batch, as TextTokenizer.encode returns them.
  tokenize(texts) {
    const rows = texts.map((t) => this.encode(t));
    const length = Math.max(0, ...rows.map((r) => r.length));
    const ids = rows.map((r) => [...r, ...new Array(length - r.length).fill(this.padId)]);
    const mask = rows.map((r) => [...new Array(r.length).fill(1), ...new Array(length - r.length).fill(0)]);
    return { ids, mask };
  }

  async embedTexts(texts) {
    const out = [];
    for (let start = 0; start < texts.length; start += MAX_BATCH) {
      const { ids, mask } = this.tokenize(texts.slice(start, start + MAX_BATCH));
      const shape = [ids.length, ids[0].length];
      const feeds = {
        input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.flat(), BigInt), shape),
        attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask.flat(), BigInt), shape),
      };
      out.push(...this.rows((await this.textSession.run(feeds)).text_embeds));
    }
    return out;
  }

  rows(tensor) {
    const [n, d] = tensor.dims;
    return Array.from({ length: n }, (_, i) => Float32Array.from(tensor.data.subarray(i * d, (i + 1) * d)));
  }

  async pixels(source) {
    const blob = typeof source === "string" ? await (await fetch(source)).blob() : source;
    return preprocess(await decodeImage(blob), this.pre);
  }

  async embedPixels(tensors) {
    const size = this.pre.image_size, plane = 3 * size * size, out = [];
    for (let start = 0; start < tensors.length; start += MAX_BATCH) {
      const chunk = tensors.slice(start, start + MAX_BATCH);
      const data = new Float32Array(chunk.length * plane);
      chunk.forEach((t, i) => data.set(t, i * plane));
      const feeds = { pixel_values: new ort.Tensor("float32", data, [chunk.length, 3, size, size]) };
      out.push(...this.rows((await this.imageSession.run(feeds)).image_embeds));
    }
    return out;
  }

  async embedImages(sources) {
    const out = [];
    for (let start = 0; start < sources.length; start += MAX_BATCH) {
      const tensors = [];
      for (const source of sources.slice(start, start + MAX_BATCH)) tensors.push(await this.pixels(source));
      out.push(...(await this.embedPixels(tensors)));
    }
    return out;
  }

  templates(lang) {
    return this.config.templates[lang] || ["{c}"];
  }

  // Class embeddings: the normalised mean of the normalised prompt embeddings (dcclip.runtime.prompts).
  async classEmbeddings(labels, lang) {
    const templates = this.templates(lang);
    const missing = labels.filter((label) => !this.classCache.has(`${lang}\u0000${label}`));
    if (missing.length) {
      const prompts = missing.flatMap((label) => templates.map((t) => t.replaceAll("{c}", label)));
      const embedded = await this.embedTexts(prompts);
      missing.forEach((label, i) => {
        const mean = new Float32Array(embedded[0].length);
        for (let t = 0; t < templates.length; t++) {
          const unit = l2normalize(embedded[i * templates.length + t]);
          for (let d = 0; d < mean.length; d++) mean[d] += unit[d];
        }
        for (let d = 0; d < mean.length; d++) mean[d] /= templates.length;
        this.classCache.set(`${lang}\u0000${label}`, l2normalize(mean));
      });
    }
    return labels.map((label) => this.classCache.get(`${lang}\u0000${label}`));
  }

  // For each image embedding, labels with softmax probabilities over logit_scale * cosine, most likely first.
  async classifyEmbeddings(imageEmbeddings, labels, lang, topK = 5) {
    const classes = await this.classEmbeddings(labels, lang);
    const scale = this.manifest.logit_scale ?? 100.0;
    return imageEmbeddings.map((emb) => {
      const probs = softmax(classes.map((c) => scale * dot(emb, c)));
      const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
      return order.slice(0, Math.min(topK, labels.length)).map((i) => ({ label: labels[i], probability: probs[i] }));
    });
  }

  async classify(sources, labels, lang, topK = 5) {
    return this.classifyEmbeddings(await this.embedImages(sources), labels, lang, topK);
  }

  // The image set exported with the page (build --images), as {names, embeddings}; null when there is none.
  async loadIndex() {
    if (this.index || !this.config.index) return this.index;
    const info = this.config.index;
    const buffer = await (await fetch(`${this.root}/${info.embeddings}`)).arrayBuffer();
    const flat = new Float32Array(buffer);
    const embeddings = info.names.map((_, i) => flat.subarray(i * info.dim, (i + 1) * info.dim));
    this.index = { names: info.names, urls: info.names.map((n) => `${this.root}/${info.images}/${n}`), embeddings };
    return this.index;
  }

  // Rank the index (plus images added on the page) by cosine similarity to a text query.
  async search(query, extra = [], topK = 10) {
    const index = (await this.loadIndex()) || { urls: [], embeddings: [] };
    const items = [...index.urls.map((url, i) => ({ url, embedding: index.embeddings[i] })), ...extra];
    const [q] = await this.embedTexts([query]);
    return items
      .map((item) => ({ url: item.url, score: dot(q, item.embedding) }))
      .sort((a, b) => b.score - a.score)
      .slice(0, topK);
  }
}
