// The page of `tbps serve`: everything it shows comes from the JSON API beside it.
"use strict";
const $ = (id) => document.getElementById(id);
let current = "";  // the query the shown results answer

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function search(event) {
  event.preventDefault();
  const q = $("query").value, k = $("k").value;
  const started = performance.now();
  showError("");
  $("status").textContent = "searching…";
  try {
    const body = await getJSON(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    current = body.query;
    drawResults(body.results);
    const total = performance.now() - started;
    $("status").textContent = `${body.results.length} of ${body.images} images in ` +
      `${body.server_ms.toFixed(1)} ms on the server, ${total.toFixed(0)} ms in all ` +
      `(${body.vector_index} search` +
      (body.rescored_candidates ? `, best ${body.rescored_candidates} re-scored)` : ")");
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
  }
}

function drawResults(results) {
  const list = $("results");
  list.replaceChildren();
  $("explanation").hidden = true;
  for (const hit of results) {
    const item = document.createElement("li");
    item.className = "result";
    item.dataset.name = hit.name;
    item.dataset.rank = hit.rank;
    const button = document.createElement("button");
    button.type = "button";
    button.title = `${hit.name}: click to see which words match where`;
    const img = document.createElement("img");
    img.src = `/api/image?name=${encodeURIComponent(hit.name)}`;
    img.alt = hit.name;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${hit.rank}. ${hit.score.toFixed(3)}`;
    button.append(img, label);
    button.addEventListener("click", () => explain(item));
    item.append(button);
    list.append(item);
  }
}

async function explain(item) {
  for (const other of document.querySelectorAll(".result.selected")) other.classList.remove("selected");
  item.classList.add("selected");
  showError("");
  $("explain-source").textContent = "looking…";
  $("overlays").replaceChildren();
  $("explanation").hidden = false;
  $("explain-image").textContent = `#${item.dataset.rank} (${item.dataset.name})`;
  try {
    const body = await getJSON(`/api/explain?q=${encodeURIComponent(current)}` +
                               `&image=${encodeURIComponent(item.dataset.name)}`);
    $("explain-source").textContent = `where each phrase looks: ${body.source} ` +
      `(${body.explain_ms.toFixed(0)} ms)`;
    for (const phrase of body.phrases) {
      const figure = document.createElement("figure");
      figure.className = "overlay";
      const img = document.createElement("img");
      img.src = phrase.overlay;
      img.alt = `attention of "${phrase.phrase}"`;
      const caption = document.createElement("figcaption");
      caption.textContent = phrase.phrase;
      figure.append(img, caption);
      $("overlays").append(figure);
    }
  } catch (err) {
    showError(err.message);
    $("explain-source").textContent = "";
  }
}

$("search-form").addEventListener("submit", search);
getJSON("/api/info").then((info) => {
  $("info").textContent = `${info.images} images of ${info.gallery}, model ${info.checkpoint}`;
  $("k").max = info.max_k;
}).catch((err) => showError(err.message));
