// The Label page: rank the completions of each prompt, best first (mouse or keys 1-9), save, skip, go back.
"use strict";

const state = {
  session: null,   // id of this browser's labelling session (kept in sessionStorage: resume after a reload)
  view: null,      // what the server last sent: {item, status, ranking?, progress}
  picks: [],       // indices of the shown completions, best first
  steps: 0,        // 0: the current item; n > 0: n items back in this session's history
  renewTimer: null,
};

const $ = (id) => document.getElementById(id);

async function openSession() {
  const answer = await api("/api/label/session", {name: savedName()});
  state.session = answer.session;
  sessionStorage.setItem("textenv.session", answer.session);
}

/** Call the API with this session; a session the server forgot (restart) is opened again once. */
async function withSession(path, body) {
  try { return await api(path, {session: state.session, ...body}); }
  catch (err) {
    if (err.status !== 404 || !/unknown session/.test(err.message)) throw err;
    await openSession();
    return await api(path, {session: state.session, ...body});
  }
}

async function loadCurrent() {
  state.steps = 0;
  show(await withSession("/api/label/next", {}));
}

function show(view) {
  state.view = view;
  state.picks = view.ranking ? view.ranking.slice() : [];
  $("desk").classList.remove("hidden");
  const progress = view.progress;
  $("counts").textContent = `${progress.done} of ${progress.total} items labelled · ${progress.mine} by you ` +
    `this session`;
  $("bar").style.width = progress.total ? (100 * progress.done / progress.total).toFixed(1) + "%" : "0";
  const finished = !view.item;
  $("finished").classList.toggle("hidden", !finished);
  for (const id of ["undo", "save", "skip"]) $(id).disabled = finished;
  const where = $("where");
  where.className = "badge " + (view.status === "saved" ? "saved" : "skipped") + (state.steps ? "" : " hidden");
  where.textContent = state.steps ? `${state.steps} back · ${view.status}` : "";
  if (finished) { clear($("completions")); $("prompt").textContent = ""; updateButtons(); return; }
  $("prompt").textContent = view.item.prompt;
  renderCompletions();
  keepLease();
}

function renderCompletions() {
  const list = $("completions");
  clear(list);
  const readOnly = state.view.status !== "todo";
  state.view.item.completions.forEach((text, index) => {
    const position = state.picks.indexOf(index);
    const button = el("button", {class: "completion card" + (position >= 0 ? " ranked" : ""),
                                 "data-index": index, onclick: () => pick(index)}, [
      el("span", {class: "key", text: index + 1}),
      el("span", {class: "text", text: text.trim() ? text : "(empty completion)"}),
      el("span", {class: "rank", text: position >= 0 ? "#" + (position + 1) : ""}),
    ]);
    button.disabled = readOnly;
    list.appendChild(button);
  });
  updateButtons();
}

function updateButtons() {
  const view = state.view;
  const todo = view && view.item && view.status === "todo";
  const K = todo ? view.item.completions.length : 0;
  $("save").disabled = !todo || state.picks.length !== K;
  $("undo").disabled = !todo || state.picks.length === 0;
  $("skip").disabled = !todo;
  $("back").disabled = !view || view.progress.history <= state.steps;
  $("forward").disabled = state.steps === 0;
}

function pick(index) {
  if (!state.view.item || state.view.status !== "todo") return;
  const K = state.view.item.completions.length;
  const position = state.picks.indexOf(index);
  if (position >= 0) state.picks = state.picks.slice(0, position);     // undo from there
  else if (index < K) state.picks.push(index);
  if (state.picks.length === K - 1) {                                  // the last one is implied
    state.picks.push([...Array(K).keys()].find((i) => !state.picks.includes(i)));
  }
  renderCompletions();
  say(state.picks.length === K ? "ranking complete: Enter (or Save) saves it" : "next best?");
}

function undo() {
  if (!state.picks.length) return;
  const K = state.view.item.completions.length;
  state.picks.pop();
  if (state.picks.length === K - 1) state.picks.pop();   // the implied last one goes with its predecessor
  renderCompletions();
}

async function save() {
  const view = state.view;
  if (!view.item || view.status !== "todo" || state.picks.length !== view.item.completions.length) return;
  try {
    await withSession("/api/label/submit", {item: view.item.id, order: state.picks});
    say("saved", "ok");
  } catch (err) { say(err.message, "error"); if (err.status !== 409) return; }
  await loadCurrent();
}

async function skip() {
  if (!state.view.item || state.view.status !== "todo") return;
  await withSession("/api/label/skip", {item: state.view.item.id});
  say("skipped: it stays for someone else; Back returns to it");
  await loadCurrent();
}

async function back() {
  if (state.view.progress.history <= state.steps) return;
  const steps = state.steps + 1;
  const view = await withSession("/api/label/back", {steps});
  state.steps = steps;
  show(view);
  say(view.status === "saved" ? "saved earlier (read-only: saved rankings stay as they are)" :
      view.status === "taken" ? "someone else has it now" : "skipped earlier: you can rank it now");
}

async function forward() {
  if (state.steps <= 1) { await loadCurrent(); say(""); return; }
  const steps = state.steps - 1;
  const view = await withSession("/api/label/back", {steps});
  state.steps = steps;
  show(view);
}

/** Keep the item reserved while it is on screen (the lease would otherwise expire for others to take). */
function keepLease() {
  clearInterval(state.renewTimer);
  if (!state.view.item || state.view.status !== "todo") return;
  const item = state.view.item.id;
  state.renewTimer = setInterval(() => {
    withSession("/api/label/renew", {item}).catch(() => {});
  }, 60000);
}

function onKey(event) {
  if (typingIn(event) || event.ctrlKey || event.metaKey || event.altKey || !state.view) return;
  const key = event.key;
  const run = (action) => { event.preventDefault(); action().catch((err) => say(err.message, "error")); };
  if (/^[1-9]$/.test(key)) { event.preventDefault(); pick(Number(key) - 1); }
  else if (key === "Enter") run(save);
  else if (key === "u" || key === "Backspace") { event.preventDefault(); undo(); }
  else if (key === "s") run(skip);
  else if (key === "b" || key === "ArrowLeft") run(back);
  else if (key === "n" || key === "ArrowRight") run(forward);
}

async function begin() {
  $("login").classList.add("hidden");
  showWho();
  state.session = sessionStorage.getItem("textenv.session");
  if (!state.session) await openSession();
  await loadCurrent();
}

function start() {
  showWho();
  $("start").addEventListener("click", () => {
    const name = $("name").value.trim();
    if (!name) { say("type your name first", "error"); return; }
    saveName(name);
    begin().catch((err) => say(err.message, "error"));
  });
  $("name").addEventListener("keydown", (event) => { if (event.key === "Enter") $("start").click(); });
  const buttons = {undo: async () => undo(), save, skip, back, forward};
  for (const [id, action] of Object.entries(buttons)) {
    $(id).addEventListener("click", () => action().catch((err) => say(err.message, "error")));
  }
  $("change-name").addEventListener("click", () => {
    clearInterval(state.renewTimer);
    sessionStorage.removeItem("textenv.session");   // the next name gets a session of its own
    state.session = null;
    state.view = null;
    $("desk").classList.add("hidden");
    $("name").value = "";
    $("login").classList.remove("hidden");
    $("name").focus();
  });
  document.addEventListener("keydown", onKey);
  if (!savedName()) { $("login").classList.remove("hidden"); $("name").focus(); return; }
  begin().catch((err) => say(err.message, "error"));
}

start();
