// The xmodal web page: plain JS over the JSON API of the server that served it (no framework, no build).
// API text is only ever put into the page with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "xmodal.apiKey";
const state = {
  index: null,        // GET /v1/index, once it answers
  image: null,        // the query image (a File)
  preview: null,      // its blob URL
  thumbs: [],         // blob URLs of the shown thumbnails, revoked when replaced
  search: 0,          // number of the latest search: older answers are dropped
  noDecoder: null,    // the server's 501 message once the model turned out to have no caption decoder
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

function postJson(path, body) {
  return getJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// Image endpoints take multipart: the image as `file`, other fields as strings.
function postImage(path, fields) {
  const form = new FormData();
  form.append("file", state.image, state.image.name || "image");
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
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

// ---------------------------------------------------------------- index info

async function loadIndex() {
  clearTimeout(state.retry);
  const info = $("index-info");
  try {
    const index = await getJson("/v1/index");
    state.index = index;
    const captions = index.texts ? ` · ${index.texts.toLocaleString()} captions` : "";
    info.textContent = `${index.images.toLocaleString()} images${captions} · ${index.model} · ${index.version}`;
    info.title = `${index.index_key}, ${index.embed_dim}-d ${index.metric}, built ${index.created_at}`;
  } catch (err) {
    state.index = null;
    if (err.status === 503) {
      info.textContent = "The server is still loading its model and index…";
      state.retry = setTimeout(loadIndex, 2000);
    } else if (err.status === 401) {
      info.textContent = "This server needs an API key: enter it at the right.";
    } else {
      info.textContent = `Index unavailable: ${err.message}`;
    }
  }
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  showStatus(key ? "API key saved in this browser." : "API key removed.");
  loadIndex();
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
    showStatus(`${body.results.length} result${plural} for ${label} in ${Math.round(body.took_ms)} ms`);
  } catch (err) {
    if (number === state.search) showError(err);
  }
}

function searchText(event) {
  event.preventDefault();
  const text = $("query").value;
  runSearch(`“${text}”`, () => postJson("/v1/search/text", { text, k: readK() }));
}

// Not checked here: the server's limit (max_k) is the one that counts, and its message says what it is.
const readK = () => Number($("k").value);

async function searchByImage() {
  const image = state.image;
  renderTexts([]);
  await runSearch(`the image ${image.name || ""}`.trim(), () => postImage("/v1/search/image", { k: readK() }));
  if (!state.index || !state.index.texts || image !== state.image) return;
  try {  // image → text: the index's captions nearest to this image
    const body = await postImage("/v1/search/image", { k: Math.min(readK(), 10), target: "texts" });
    if (image === state.image) renderTexts(body.results);
  } catch (err) {
    showError(err);
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
    const response = await api(`/v1/items/${hit.id}/image`, { redirect: "manual" });
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
  const usable = state.image !== null && state.noDecoder === null;
  ["caption", "question", "ask"].forEach((id) => { $(id).disabled = !usable; });
  if (state.noDecoder !== null) {
    $("tools-note").textContent = "Caption and Ask need a model with a caption decoder (a CoCa model); "
      + `this server's model has none (plain CLIP). The server said: ${state.noDecoder}`;
  } else {
    $("tools-note").textContent = state.image ? "" : "Choose an image to search with it, caption it or ask about it.";
  }
}

async function generate(label, path, fields) {
  const button = label === "Caption" ? $("caption") : $("ask");
  const image = state.image;
  button.disabled = true;
  showAnswer(label, "…");
  try {
    const body = await postImage(path, fields);
    if (image !== state.image) return;  // about an image that is no longer the query
    showAnswer(label, body.caption !== undefined ? body.caption : body.answer);
  } catch (err) {
    if (image === state.image) $("answer").hidden = true;
    if (err.status === 501) {
      state.noDecoder = err.message;
    } else {
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
  wireDropZone();
  loadIndex();
});
