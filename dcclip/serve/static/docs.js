// The API docs at /docs, from the server's own /openapi.json: no CDN, so they work with no internet.
// Everything from the schema reaches the page through textContent, never as HTML.
"use strict";

const byId = (id) => document.getElementById(id);

/** An element with a class and text content (text, never HTML). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

/** A schema with its $refs resolved one level, shown as indented JSON. */
function schemaText(schema, spec) {
  const ref = schema && schema.$ref;
  const resolved = ref ? spec.components.schemas[ref.split("/").pop()] : schema;
  return JSON.stringify(resolved, null, 2);
}

function requestBlock(operation, spec) {
  const content = operation.requestBody && operation.requestBody.content;
  if (!content) return [];
  return Object.entries(content).map(([type, body]) => {
    const block = el("details", "templates");
    block.append(el("summary", "", `Request body (${type})`), el("pre", "", schemaText(body.schema, spec)));
    return block;
  });
}

function responsesBlock(operation) {
  const codes = Object.entries(operation.responses || {}).map(([code, answer]) => `${code} ${answer.description || ""}`);
  return codes.length ? [el("p", "hint", `Responses: ${codes.join(" · ")}`)] : [];
}

function endpointCard(path, method, operation, spec) {
  const card = el("section", "card endpoint");
  card.append(el("h2", "", `${method.toUpperCase()} ${path}`));
  if (operation.summary) card.append(el("p", "", operation.summary));
  if (operation.description) card.append(el("p", "hint", operation.description));
  card.append(...requestBlock(operation, spec), ...responsesBlock(operation));
  return card;
}

function render(spec) {
  byId("api-version").textContent = `${spec.info.title} ${spec.info.version} · OpenAPI ${spec.openapi}`;
  byId("api-description").append(el("pre", "description", spec.info.description || ""));
  const cards = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) cards.push(endpointCard(path, method, operation, spec));
  }
  byId("endpoints").replaceChildren(...cards);
  document.body.dataset.ready = "true";
}

async function start() {
  try {
    const response = await fetch("/openapi.json", { credentials: "same-origin" });
    render(await response.json());
  } catch (error) {
    const box = byId("docs-message");
    box.textContent = `Cannot read /openapi.json: ${error.message}`;
    box.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", start);
