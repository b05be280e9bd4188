// The xmodal web page: plain JS over the JSON API of the server that served it (no framework, no build).
// API text is only ever put into the page with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "xmodal.apiKey";
const INDEX_STORAGE = "xmodal.index";
const state = {
  indexes: [],        // GET /v1/indexes: every served index's summary
  index: null,        // the chosen one's, once it answers
  indexName: null,    // its name, sent as `index` with every call; null when the server serves one index
  image: null,        // the query image (a File)
  preview: null,      // its blob URL
  thumbs: [],         // blob URLs of the shown thumbnails, revoked when replaced
  search: 0,          // number of the latest search: older answers are dropped
  lastSearch: null,   // the latest search ({text} or {image: true}), run again when another index is chosen
  noDecoder: new Map(),  // model (spec + fingerprint) → the server's 501 message: that model has no caption decoder
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Every API call: the key (when one is saved) as a Bearer token; a failure becomes an ApiError with the
// server's own message (errors are JSON {"detail": "..."}).
async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  if (!response.ok && response.type !== "opaqueredirect") {
    throw new ApiError(response.status, await errorText(response));
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.detail !== undefined) {
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (err) {
    // not JSON (a proxy's page, say): fall back to the status text
  }
  return response.statusText || "request failed";
}

const getJson = async (path, options) => (await api(path, options)).json();

// The chosen index goes with every call that reads an index or uses its model: a JSON or form field `index`
// (a query parameter for GETs). With one index served nothing is added, as before there were several.
const withIndex = (fields) => (state.indexName === null ? fields : { ...fields, index: state.indexName });
const indexQuery = () => (state.indexName === null ? "" : `?index=${encodeURIComponent(state.indexName)}`);

function postJson(path, body) {
  return getJson(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(withIndex(body)),
  });
}

// Image endpoints take multipart: the image as `file`, other fields as strings.
function postImage(path, fields) {
  const form = new FormData();
  form.append("file", state.image, state.image.name || "image");
  for (const [name, value] of Object.entries(withIndex(fields))) form.append(name, String(value));
  return getJson(path, { method: "POST", body: form });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showError(err) {
  const hint = err.status === 401 ? " (enter the server's API key at the top right)" : "";
  showStatus(err.status ? `Error ${err.status}: ${err.message}${hint}` : `Error: ${err.message}`, true);
}

// ---------------------------------------------------------------- the served indexes

// GET /v1/indexes: with several, a select in the header picks one (remembered in this browser); the info
// line describes the chosen one.
async function loadIndexes() {
  clearTimeout(state.retry);
  const info = $("index-info");
  try {
    const { indexes } = await getJson("/v1/indexes");
    if (indexes.length === 0) throw new ApiError(0, "the server serves no index");
    state.indexes = indexes;
    const several = indexes.length > 1;
    const select = $("index-select");
    select.replaceChildren(...(several ? indexes.map((index) => new Option(index.name, index.name)) : []));
    $("index-pick").hidden = !several;
    const names = indexes.map((index) => index.name);
    const saved = localStorage.getItem(INDEX_STORAGE);
    // The saved choice while it is served; else the one named default, else the first.
    const name = names.includes(saved) ? saved : (names.includes("default") ? "default" : names[0]);
    chooseIndex(several ? name : null);
  } catch (err) {
    state.index = null;
    if (err.status === 503) {
      info.textContent = "The server is still loading its models and indexes…";
      state.retry = setTimeout(loadIndexes, 2000);
    } else if (err.status === 401) {
      info.textContent = "This server needs an API key: enter it at the right.";
    } else {
      info.textContent = `Index unavailable: ${err.message}`;
    }
  }
}

// name: the chosen index (null: the only one served).
function chooseIndex(name) {
  state.indexName = name;
  const index = name === null ? state.indexes[0] : state.indexes.find((candidate) => candidate.name === name);
  state.index = index;
  if (name !== null) $("index-select").value = name;
  const info = $("index-info");
  const captions = index.texts ? ` · ${index.texts.toLocaleString()} captions` : "";
  info.textContent = `${index.images.toLocaleString()} images${captions} · ${index.model} · ${index.version}`;
  info.title = `${index.index_key}, ${index.embed_dim}-d ${index.metric}, built ${index.created_at}`;
  updateTools();
}

function pickIndex() {
  const name = $("index-select").value;
  if (name === state.indexName) return;
  localStorage.setItem(INDEX_STORAGE, name);
  chooseIndex(name);
  $("answer").hidden = true;  // a caption or answer by the other index's model
  renderTexts([]);
  // The same query on the chosen index, so the page never shows one index's results under another's name.
  if (state.lastSearch && state.lastSearch.image) searchByImage();
  else if (state.lastSearch) runTextSearch(state.lastSearch.text);
}

// Which model answers for the chosen index: indexes built with the same weights share one.
const modelKey = () => (state.index ? `${state.index.model} ${state.index.fingerprint}` : "");

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  showStatus(key ? "API key saved in this browser." : "API key removed.");
  loadIndexes();
}

// ---------------------------------------------------------------- searches

async function runSearch(label, request) {
  const number = ++state.search;
  showStatus("Searching…");
  try {
    const body = await request();
    if (number !== state.search) return;  // a newer search has started
    renderResults(body.results);
    const plural = body.results.length === 1 ? "" : "s";
    const where = state.indexName === null ? "" : ` from ${state.indexName}`;
    showStatus(`${body.results.length} result${plural} for ${label}${where} in ${Math.round(body.took_ms)} ms`);
  } catch (err) {
    if (number === state.search) showError(err);
  }
}

function searchText(event) {
  event.preventDefault();
  runTextSearch($("query").value);
}

function runTextSearch(text) {
  state.lastSearch = { text };
  runSearch(`“${text}”`, () => postJson("/v1/search/text", { text, k: readK() }));
}

// Not checked here: the server's limit (max_k) is the one that counts, and its message says what it is.
const readK = () => Number($("k").value);

async function searchByImage() {
  const image = state.image;
  const index = state.index;
  const indexName = state.indexName;
  state.lastSearch = { image: true };
  renderTexts([]);
  await runSearch(`the image ${image.name || ""}`.trim(), () => postImage("/v1/search/image", { k: readK() }));
  const current = () => image === state.image && indexName === state.indexName;
  if (!index || !index.texts || !current()) return;
  try {  // image → text: the index's captions nearest to this image
    const body = await postImage("/v1/search/image", { k: Math.min(readK(), 10), target: "texts" });
    if (current()) renderTexts(body.results);
  } catch (err) {
    if (current()) showError(err);
  }
}

function renderResults(hits) {
  state.thumbs.forEach((url) => URL.revokeObjectURL(url));
  state.thumbs = [];
  $("results").replaceChildren(...hits.map(card));
}

function card(hit) {
  const figure = el("figure", "card");
  figure.dataset.id = String(hit.id);
  const thumb = el("button", "thumb", "loading…");
  thumb.type = "button";
  thumb.title = "Search with this image";
  const caption = el("figcaption");
  caption.append(el("span", "score", hit.score.toFixed(3)), el("span", "path", hit.path));
  caption.lastChild.title = hit.path;
  if (hit.captions && hit.captions.length) {
    const list = el("ul");
    hit.captions.slice(0, 2).forEach((text) => list.append(el("li", "", text)));
    caption.append(list);
  }
  figure.append(thumb, caption);
  loadThumb(thumb, hit);
  return figure;
}

// Thumbnails come from the API, which needs the key when auth is on; <img src> cannot send a header, so
// the image is fetched with it and shown from a blob: URL.
async function loadThumb(thumb, hit) {
  try {
    // Items indexed from a URL answer with a redirect to it; the page's policy does not show remote images.
    const response = await api(`/v1/items/${hit.id}/image${indexQuery()}`, { redirect: "manual" });
    if (response.type === "opaqueredirect") {
      thumb.textContent = "image at its source URL";
      thumb.disabled = true;
      return;
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    state.thumbs.push(url);
    const img = el("img");
    img.alt = hit.path;
    img.src = url;
    thumb.replaceChildren(img);
    const name = hit.path.split("/").pop();
    thumb.addEventListener("click", () => useImage(new File([blob], name, { type: blob.type })));
  } catch (err) {
    thumb.textContent = `no image (${err.message})`;
    thumb.disabled = true;
  }
}

function renderTexts(hits) {
  $("texts-section").hidden = hits.length === 0;
  $("texts").replaceChildren(...hits.map((hit) => {
    const item = el("li");
    item.append(el("span", "score", hit.score.toFixed(3)), el("span", "text", hit.text));
    return item;
  }));
}

// ---------------------------------------------------------------- the query image: search, caption, ask

function useImage(file) {
  if (!file) return;
  state.image = file;
  if (state.preview) URL.revokeObjectURL(state.preview);
  state.preview = URL.createObjectURL(file);
  $("preview").src = state.preview;
  $("preview").hidden = false;
  $("drop-hint").textContent = file.name || "image";
  $("answer").hidden = true;
  updateTools();
  searchByImage();
}

function updateTools() {
  const noDecoder = state.noDecoder.get(modelKey());
  const usable = state.image !== null && noDecoder === undefined;
  ["caption", "question", "ask"].forEach((id) => { $(id).disabled = !usable; });
  if (noDecoder !== undefined) {
    const whose = state.indexName === null ? "this server's model" : `the model of the index ${state.indexName}`;
    $("tools-note").textContent = "Caption and Ask need a model with a caption decoder (a CoCa model); "
      + `${whose} has none (plain CLIP). The server said: ${noDecoder}`;
  } else {
    $("tools-note").textContent = state.image ? "" : "Choose an image to search with it, caption it or ask about it.";
  }
}

async function generate(label, path, fields) {
  const button = label === "Caption" ? $("caption") : $("ask");
  const image = state.image;
  const indexName = state.indexName;
  const model = modelKey();
  const current = () => image === state.image && indexName === state.indexName;
  button.disabled = true;
  showAnswer(label, "…");
  try {
    const body = await postImage(path, fields);
    // Not shown when about an image that is no longer the query, or by the model of an index no longer chosen.
    if (current()) showAnswer(label, body.caption !== undefined ? body.caption : body.answer);
  } catch (err) {
    if (current()) $("answer").hidden = true;
    if (err.status === 501) {
      state.noDecoder.set(model, err.message);
    } else if (current()) {
      showError(err);
    }
  }
  updateTools();
}

function showAnswer(label, text) {
  $("answer-label").textContent = `${label}:`;
  $("answer-text").textContent = text;
  $("answer").hidden = false;
}

function ask(event) {
  event.preventDefault();
  generate("Answer", "/v1/vqa", { question: $("question").value });
}

// ---------------------------------------------------------------- wiring

function wireDropZone() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();  // allows the drop
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();  // the browser would otherwise open the file
    drop.classList.remove("over");
    useImage(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (event) => {
    useImage(event.target.files[0]);
    event.target.value = "";  // choosing the same file again is a new choice
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", saveKey);
  $("text-form").addEventListener("submit", searchText);
  $("ask-form").addEventListener("submit", ask);
  $("caption").addEventListener("click", () => generate("Caption", "/v1/caption", {}));
  $("index-select").addEventListener("change", pickIndex);
  wireDropZone();
  loadIndexes();
});
