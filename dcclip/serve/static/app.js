// The dcclip page: zero-shot classification and text-to-image search over the public HTTP API only
// (GET /v1/info, POST /v1/classify, POST /v1/search), so it doubles as an example client.
//
// Security: everything a user or the server supplies (labels, file names, index keys, error messages) reaches
// the page through textContent or element properties, never as HTML. The server's Content-Security-Policy
// allows no inline code, so this file is the only script that runs.
"use strict";

const THUMB_PATH = /^\/v1\/index\/thumbs\/[0-9]+$/;
// Label separators: ASCII comma, newline, and the commas of CJK and Arabic text, so labels typed in any script
// split the way their writer expects. The one rule of dcclip.runtime.labels (the CLI and /v1/classify use it);
// tests/browser/test_page_labels.py checks both give the same labels.
const LABEL_SEPARATORS = /[,\n\r\uFF0C\u3001\u060C]+/;
const DEFAULT_TEMPLATES = "default"; // /v1/search: the language's built-in prompt templates
const MULTIPART_PART_BYTES = 512; // headers of one multipart part, counted when sizing a request before sending

const state = {
  info: null, // the server's /v1/info
  images: [], // {file, url, pixels}: the images chosen for classification, in order
};

// ---------------------------------------------------------------------------------------------------------------
// Small DOM helpers
// ---------------------------------------------------------------------------------------------------------------

const byId = (id) => document.getElementById(id);

/** An element with a class and text content (text, never HTML). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

/** Show a message in one of the page's alert boxes, or hide the box when the message is empty. */
function showMessage(id, text) {
  const box = byId(id);
  box.textContent = text || "";
  box.hidden = !text;
  if (text) revealIfHidden(box);
}

/** Scroll a new message or result into view when it appeared below the screen (on phones the form fills it). */
function revealIfHidden(node) {
  const box = node.getBoundingClientRect();
  if (box.top > window.innerHeight || box.bottom < 0) node.scrollIntoView({ block: "nearest" });
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(bytes % (1024 * 1024) ? 1 : 0)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

function formatCount(n) {
  return Number(n).toLocaleString("en-US");
}

/** "Chinese (zh)" where the browser knows the language's name, the bare code otherwise. */
function languageName(code) {
  try {
    const name = new Intl.DisplayNames(["en"], { type: "language" }).of(code);
    return name && name !== code ? `${name} (${code})` : code;
  } catch {
    return code;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The API: one function for every call, so every failure becomes a readable message
// ---------------------------------------------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/** Call the API on this origin; resolve with the JSON answer or reject with an ApiProblem carrying its message. */
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, credentials: "same-origin", cache: "no-store" });
  } catch (error) {
    throw new ApiProblem(`Cannot reach the server: ${error.message}`, "network_error", 0);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null; // a proxy's HTML error page, or uvicorn's own plain-text 400
  }
  if (!response.ok) {
    const error = body && body.error;
    const message = (error && error.message) || text.trim().slice(0, 300) || response.statusText;
    throw new ApiProblem(message || `HTTP ${response.status}`, (error && error.code) || "http_error", response.status);
  }
  if (body === null) throw new ApiProblem("The server sent an answer that is not JSON", "invalid_answer", 0);
  return body;
}

function problemText(error) {
  if (error instanceof ApiProblem) return error.status ? `${error.message} (HTTP ${error.status})` : error.message;
  return `Unexpected error in the page: ${error && error.message ? error.message : error}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading and checking the inputs against the server's limits (the server checks again; this only saves a trip)
// ---------------------------------------------------------------------------------------------------------------

/** Labels from free text: split on commas (any script's) and newlines, trimmed, blanks dropped. */
function parseLabels(text) {
  return text
    .split(LABEL_SEPARATORS)
    .map((label) => label.trim())
    .filter(Boolean);
}

/** Templates: one per non-blank line. */
function parseTemplates(text) {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean);
}

function checkTexts(items, what, limits) {
  const long = items.findIndex((item) => item.length > limits.max_text_chars);
  if (long >= 0) {
    return `${what} ${long + 1} has ${items[long].length} characters; the server takes at most ${limits.max_text_chars}.`;
  }
  return null;
}

function checkTemplates(templates, limits) {
  if (templates.length > limits.max_templates) {
    return `${templates.length} templates: the server takes at most ${limits.max_templates}.`;
  }
  const missing = templates.findIndex((template) => !template.includes("{c}"));
  if (missing >= 0) return `Template ${missing + 1} ("${templates[missing]}") has no {c} where the label goes.`;
  return checkTexts(templates, "Template", limits);
}

function checkLabels(labels, limits) {
  if (!labels.length) return "Type at least one label, e.g. a cat, a dog.";
  if (labels.length > limits.max_labels) {
    return `${formatCount(labels.length)} labels: the server takes at most ${formatCount(limits.max_labels)}.`;
  }
  const seen = new Set();
  for (const label of labels) {
    if (seen.has(label)) return `The label "${label}" is given twice; each label once, please.`;
    seen.add(label);
  }
  return checkTexts(labels, "Label", limits);
}

function checkImages(images, limits) {
  if (!images.length) return "Choose or drop at least one image.";
  if (images.length > limits.max_images) {
    return `${images.length} images: the server takes at most ${limits.max_images} per request; remove some.`;
  }
  const large = images.find((image) => image.pixels > limits.max_image_pixels);
  if (large) {
    const megapixels = (limits.max_image_pixels / 1e6).toFixed(0);
    return `${large.file.name} is ${(large.pixels / 1e6).toFixed(1)} megapixels; the server takes at most ${megapixels}.`;
  }
  return null;
}

function checkPositiveInt(value, what) {
  if (!/^[0-9]+$/.test(value) || Number(value) < 1) return `${what} must be a whole number of at least 1.`;
  return null;
}

/** Bytes of a request: files, fields and their multipart headers; refused before sending when over the limit. */
function checkRequestSize(files, fields, limits) {
  const encoder = new TextEncoder();
  const fieldBytes = fields.map((value) => encoder.encode(value).length);
  const tooBig = fieldBytes.findIndex((bytes) => bytes > limits.max_field_bytes);
  if (tooBig >= 0) return `The labels or templates take ${formatBytes(fieldBytes[tooBig])}; the server takes ${formatBytes(limits.max_field_bytes)} per field.`;
  const total =
    files.reduce((sum, file) => sum + file.size + MULTIPART_PART_BYTES, 0) +
    fieldBytes.reduce((sum, bytes) => sum + bytes + MULTIPART_PART_BYTES, 0);
  if (total > limits.max_request_bytes) {
    return `The images add up to ${formatBytes(total)}; the server takes at most ${formatBytes(limits.max_request_bytes)} per request.`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Images: choose, drop, preview, remove
// ---------------------------------------------------------------------------------------------------------------

function addFiles(fileList) {
  const limits = state.info ? state.info.limits : null;
  const refused = [];
  for (const file of fileList) {
    // An empty type is kept: the browser does not know every image format; the server decides.
    if (file.type && !file.type.startsWith("image/")) {
      refused.push(file.name);
      continue;
    }
    const image = { file, url: URL.createObjectURL(file), pixels: 0 };
    state.images.push(image);
  }
  renderThumbs();
  if (refused.length) {
    showMessage("classify-message", `Not an image: ${refused.join(", ")}. Choose PNG, JPEG, WebP or another image.`);
  } else if (limits && state.images.length > limits.max_images) {
    showMessage("classify-message", checkImages(state.images, limits));
  } else {
    showMessage("classify-message", "");
  }
}

function removeImage(image) {
  URL.revokeObjectURL(image.url);
  state.images = state.images.filter((item) => item !== image);
  renderThumbs();
  showMessage("classify-message", "");
}

function renderThumbs() {
  const list = byId("thumbs");
  list.replaceChildren(...state.images.map(thumbItem));
  byId("clear-images").hidden = state.images.length < 2;
  const limits = state.info && state.info.limits;
  if (limits) {
    byId("images-hint").textContent = state.images.length
      ? `${state.images.length} of at most ${limits.max_images} images chosen`
      : `PNG, JPEG, WebP… up to ${limits.max_images} images, ${formatBytes(limits.max_request_bytes)} in all`;
  }
}

function thumbItem(image) {
  const item = el("li", "thumb");
  const img = el("img");
  img.alt = image.file.name;
  img.src = image.url;
  // The decoded size is only known once the preview loads; it lets the page refuse an oversized image itself.
  img.addEventListener("load", () => {
    image.pixels = img.naturalWidth * img.naturalHeight;
  });
  // A file the browser cannot preview is still sent: the server reads more formats, or says what is wrong.
  img.addEventListener("error", () => {
    img.alt = "";
    item.classList.add("no-preview");
  });
  const name = el("span", "thumb-name", image.file.name);
  name.title = image.file.name;
  const remove = el("button", "thumb-remove", "×");
  remove.type = "button";
  remove.setAttribute("aria-label", `Remove ${image.file.name}`);
  remove.addEventListener("click", () => removeImage(image));
  item.append(img, name, remove);
  return item;
}

function setUpDropZone() {
  const drop = byId("drop");
  const input = byId("images");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // choosing the same file again must fire another change
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });
  // A file dropped next to the zone must not navigate away from the page and lose the user's work.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  byId("clear-images").addEventListener("click", () => {
    for (const image of [...state.images]) URL.revokeObjectURL(image.url);
    state.images = [];
    renderThumbs();
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Classify
// ---------------------------------------------------------------------------------------------------------------

/** The classify request as FormData, or a message saying what to fix first. */
function classifyRequest() {
  const limits = state.info.limits;
  const labels = parseLabels(byId("labels").value);
  const templates = parseTemplates(byId("templates").value);
  const topK = byId("top-k").value.trim();
  const problem =
    checkImages(state.images, limits) ||
    checkLabels(labels, limits) ||
    (templates.length ? checkTemplates(templates, limits) : null) ||
    checkPositiveInt(topK, "Top k");
  if (problem) return { problem };
  // Labels and templates travel as JSON lists: a label may itself hold a comma in another script's sense.
  const fields = [JSON.stringify(labels), ...(templates.length ? [JSON.stringify(templates)] : [])];
  const sizeProblem = checkRequestSize(
    state.images.map((image) => image.file),
    fields,
    limits,
  );
  if (sizeProblem) return { problem: sizeProblem };
  const form = new FormData();
  for (const image of state.images) form.append("images", image.file, image.file.name);
  form.append("labels", fields[0]);
  form.append("lang", byId("lang").value);
  form.append("top_k", topK);
  if (templates.length) form.append("templates", fields[1]);
  return { form, images: [...state.images] };
}

async function onClassify(event) {
  event.preventDefault();
  showMessage("classify-message", "");
  const request = classifyRequest();
  if (request.problem) {
    showMessage("classify-message", request.problem);
    return;
  }
  const button = byId("classify-button");
  setBusy(button, true, "Classifying…");
  try {
    const answer = await api("/v1/classify", { method: "POST", body: request.form });
    renderResults(answer, request.images);
  } catch (error) {
    showMessage("classify-message", problemText(error));
  } finally {
    setBusy(button, false, "Classify");
  }
}

function setBusy(button, busy, text) {
  button.disabled = busy;
  button.textContent = text;
  button.classList.toggle("busy", busy);
}

function renderResults(answer, images) {
  const cards = answer.results.map((result, index) => resultCard(result, images[index]));
  byId("results").replaceChildren(...cards);
  if (cards.length) revealIfHidden(cards[0]);
}

function resultCard(result, image) {
  const card = el("article", "card result");
  const head = el("div", "result-head");
  if (image) {
    const img = el("img", "result-image");
    img.alt = result.filename || image.file.name;
    img.src = image.url;
    head.append(img);
  }
  const title = el("div", "result-title");
  title.append(el("h3", "result-name", result.filename || (image && image.file.name) || "image"));
  const top = result.predictions[0];
  if (top) {
    // The label is isolated (<bdi>): an Arabic or Hebrew label must not reorder the percentage around it.
    const line = el("p", "result-top");
    line.append(el("bdi", "", top.label), ` · ${percent(top.probability)}`);
    title.append(line);
  }
  head.append(title);
  const list = el("ol", "predictions");
  list.append(...result.predictions.map(predictionRow));
  card.append(head, list);
  return card;
}

function percent(probability) {
  return `${(probability * 100).toFixed(probability >= 0.9995 || probability < 0.0005 ? 0 : 1)}%`;
}

function predictionRow(prediction, rank) {
  const row = el("li", rank === 0 ? "prediction top" : "prediction");
  const label = el("bdi", "label", prediction.label); // isolated: right-to-left labels keep the row's order
  label.dir = "auto";
  label.title = prediction.label;
  const value = el("span", "pct", percent(prediction.probability));
  const bar = el("span", "bar");
  const fill = el("span", "fill");
  // CSSOM, not a style attribute: allowed by the page's style-src 'self'.
  fill.style.width = `${Math.max(0, Math.min(1, prediction.probability)) * 100}%`;
  bar.append(fill);
  row.append(label, value, bar);
  return row;
}

// ---------------------------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------------------------

function searchRequest() {
  const limits = state.info.limits;
  const text = byId("query").value.trim();
  const k = byId("search-k").value.trim();
  const templates = parseTemplates(byId("search-templates").value);
  if (!text) return { problem: "Type what to look for, e.g. a red circle." };
  const problem =
    checkTexts([text], "The text", limits) ||
    checkPositiveInt(k, "The number of images") ||
    (templates.length ? checkTemplates(templates, limits) : null);
  if (problem) return { problem };
  const maxK = limits.max_search_k;
  if (maxK && Number(k) > maxK) return { problem: `The server returns at most ${maxK} images per search.` };
  const body = { text, lang: byId("search-lang").value, k: Number(k) };
  if (templates.length) body.templates = templates;
  else if (byId("search-lang-templates").checked) body.templates = [DEFAULT_TEMPLATES];
  return { body };
}

/** No hits on screen: a failed or refused search must not leave the previous answer looking like its own. */
function clearHits() {
  byId("search-summary").textContent = "";
  byId("hits").replaceChildren();
}

async function onSearch(event) {
  event.preventDefault();
  showMessage("search-message", "");
  const request = searchRequest();
  if (request.problem) {
    clearHits();
    showMessage("search-message", request.problem);
    return;
  }
  const button = byId("search-button");
  setBusy(button, true, "Searching…");
  try {
    const answer = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request.body),
    });
    renderHits(answer.hits, request.body.text);
  } catch (error) {
    clearHits();
    showMessage("search-message", problemText(error));
  } finally {
    setBusy(button, false, "Search");
  }
}

function renderHits(hits, text) {
  byId("search-summary").textContent = hits.length
    ? `${hits.length} closest ${hits.length === 1 ? "image" : "images"} to “${text}”`
    : "The index holds no images.";
  const items = hits.map(hitItem);
  byId("hits").replaceChildren(...items);
  if (items.length) revealIfHidden(items[0]);
}

function hitItem(hit) {
  const item = el("li", "card hit");
  const img = el("img");
  // Only this server's thumbnail route is ever used as an image address.
  img.src = THUMB_PATH.test(hit.thumbnail) ? hit.thumbnail : `/v1/index/thumbs/${Number(hit.id)}`;
  img.alt = hit.key;
  img.loading = "lazy";
  const caption = el("div", "hit-caption");
  const key = el("bdi", "hit-key", hit.key);
  key.dir = "auto";
  key.title = hit.key;
  caption.append(key, el("span", "hit-score", Number(hit.score).toFixed(3)));
  item.append(img, caption);
  return item;
}

// ---------------------------------------------------------------------------------------------------------------
// Tabs and start-up
// ---------------------------------------------------------------------------------------------------------------

function selectTab(name) {
  for (const tab of ["classify", "search"]) {
    const selected = tab === name;
    const button = byId(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    byId(`panel-${tab}`).hidden = !selected;
  }
}

function setUpTabs() {
  const names = ["classify", "search"];
  for (const name of names) {
    byId(`tab-${name}`).addEventListener("click", () => {
      selectTab(name);
      history.replaceState(null, "", name === "classify" ? location.pathname : `#${name}`);
    });
  }
  // Arrow keys move between tabs, as in every tab list.
  byId("tab-classify").parentElement.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const current = names.findIndex((name) => byId(`tab-${name}`).getAttribute("aria-selected") === "true");
    const next = names[(current + (event.key === "ArrowRight" ? 1 : names.length - 1)) % names.length];
    selectTab(next);
    byId(`tab-${next}`).focus();
  });
  selectTab(location.hash === "#search" ? "search" : "classify");
}

function fillLanguages(select, languages) {
  const codes = languages.length ? languages : ["en"];
  select.replaceChildren(
    ...codes.map((code) => {
      const option = el("option", "", languageName(code));
      option.value = code;
      return option;
    }),
  );
  select.value = codes.includes("en") ? "en" : codes[0];
}

function describeServer(info) {
  const languages = info.languages.length ? `${info.languages.length} languages` : "any language";
  const parts = [info.bundle, info.precision, languages, `dcclip ${info.dcclip_version}`];
  byId("model-info").textContent = parts.join(" · ");
  const limits = info.limits;
  byId("limits-info").textContent =
    `Limits: ${limits.max_images} images and ${formatBytes(limits.max_request_bytes)} per request, ` +
    `${formatCount(limits.max_labels)} labels, ${formatCount(limits.max_text_chars)} characters per label.`;
}

function describeIndex(info) {
  const index = info.index || { loaded: false, count: 0 };
  byId("search-unavailable").hidden = index.loaded;
  byId("search-form").hidden = !index.loaded;
  if (index.loaded) byId("query").placeholder = `Search ${formatCount(index.count)} images, e.g. a red circle`;
}

async function start() {
  setUpTabs();
  setUpDropZone();
  byId("classify-form").addEventListener("submit", onClassify);
  byId("search-form").addEventListener("submit", onSearch);
  try {
    state.info = await api("/v1/info");
  } catch (error) {
    byId("model-info").textContent = "Server unavailable";
    showMessage("page-message", `Cannot load the server's settings: ${problemText(error)}`);
    for (const button of document.querySelectorAll("button.primary")) button.disabled = true;
    return;
  }
  describeServer(state.info);
  describeIndex(state.info);
  fillLanguages(byId("lang"), state.info.languages);
  fillLanguages(byId("search-lang"), state.info.languages);
  renderThumbs();
  document.body.dataset.ready = "true"; // lets automated tests wait for start-up instead of sleeping
}

document.addEventListener("DOMContentLoaded", start);
