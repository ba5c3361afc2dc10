// textenv serve: what the pages share. Text from the server (prompts, completions, tokens) is always inserted
// with textContent (the el() helper below), never parsed as HTML: a completion saying <script> shows as text.
"use strict";

/** A new element: el("div", {class: "card", text: "hello"}, [children]). Text goes in as textContent. */
function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children || []) if (child) node.appendChild(child);
  return node;
}

/** Remove every child of node. */
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

/** An error from the API: its HTTP status and the server's one-line message. */
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** POST body (JSON) to the API path, or GET when body is undefined; returns the parsed answer. */
async function api(path, body) {
  const init = body === undefined ? {method: "GET"} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  init.credentials = "same-origin";
  let response;
  try { response = await fetch(path, init); }
  catch (err) { throw new ApiError(0, "cannot reach the server (stopped, or the network is down)"); }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  return data;
}

/** Show a message in the page's status line (kind: "", "ok" or "error"). */
function say(message, kind) {
  const status = document.getElementById("status");
  if (!status) return;
  status.textContent = message;
  status.className = "status" + (kind ? " " + kind : "");
}

/** The labeller's name, remembered in this browser. */
function savedName() { return localStorage.getItem("textenv.name") || ""; }
function saveName(name) { localStorage.setItem("textenv.name", name); }

/** Fill the header's "who" slot with the saved name. */
function showWho() {
  const who = document.getElementById("who");
  if (who) who.textContent = savedName() ? "labelling as " + savedName() : "";
}

/** True when a key event comes from a text field (the page's keys must not fire while typing). */
function typingIn(event) {
  const target = event.target;
  return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
}
