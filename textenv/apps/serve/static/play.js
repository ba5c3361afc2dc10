// The Play page: one episode of TextGen-v0 in which you choose the actions.
"use strict";

const game = {id: null, view: null, busy: false, preferences: false, preferred: null};
const $ = (id) => document.getElementById(id);

/** A token's text as shown: spaces and line breaks made visible. */
function visible(text) {
  return text.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
}

function percent(p) { return p === null || p === undefined ? "–" : (100 * p).toFixed(p < 0.001 ? 3 : 1) + "%"; }
function fixed(x, digits) {
  if (x === null || x === undefined) return "–";
  return Number(x).toFixed(digits).replace(/^-(0(\.0*)?)$/, "$1");   // no "-0.000"
}

async function call(path, body) {
  if (game.busy) return;
  game.busy = true;
  setDisabled(true);
  say("the model is thinking…");
  try {
    const view = await api(path, body);
    game.id = view.game;
    render(view);
    say("");
  } catch (err) { say(err.message, "error"); }
  finally { game.busy = false; setDisabled(false); }
}

function setDisabled(disabled) {
  for (const button of document.querySelectorAll("#game button, #new-game")) button.disabled = disabled;
  if (!disabled && game.view) {
    $("undo").disabled = game.view.state.tokens.length === 0;
    if (game.view.result) renderPreference(game.view.state);
  }
}

function move(kind, extra) { return call("/api/play/move", {game: game.id, move: kind, ...extra}); }

function render(view) {
  game.view = view;
  const s = view.state;
  $("game").classList.remove("hidden");
  $("step-sub").textContent = s.step;
  $("step").textContent = `token ${s.step} of at most ${s.max_new_tokens}`;
  $("kl").textContent = fixed(s.kl, 3);
  $("beta").textContent = fixed(s.kl_coef, 3);
  $("ref-legend").classList.toggle("hidden", !s.has_reference);
  $("ref-head").classList.toggle("hidden", !s.has_reference);
  renderEpisode(s);
  renderCandidates(s);
  $("moves").classList.toggle("hidden", s.done);
  $("result").classList.toggle("hidden", !s.done);
  if (view.result) { renderResult(view.result); renderPreference(s); }
}

function renderEpisode(s) {
  const box = $("episode");
  clear(box);
  box.appendChild(el("span", {class: "prompt-text", text: s.prompt}));
  for (const token of s.tokens) {
    const title = `${token.source}: log π_θ ${fixed(token.logprob, 2)}` +
      (token.ref_logprob === null ? "" : `, log π_ref ${fixed(token.ref_logprob, 2)}`) + `, KL_t ${fixed(token.kl, 3)}`;
    box.appendChild(el("span", {class: "tok " + token.source, text: token.text, title}));
  }
}

function renderCandidates(s) {
  const list = $("candidates");
  clear(list);
  const top = Math.max(...s.candidates.map((c) => Math.max(c.prob, c.ref_prob || 0)), 1e-9);
  for (const c of s.candidates) {
    const bar = el("span", {class: "bar"}, [el("span", {class: "p"})]);
    bar.firstChild.style.width = (100 * c.prob / top).toFixed(1) + "%";
    if (c.ref_prob !== null) {
      const ref = el("span", {class: "ref"});
      ref.style.width = (100 * c.ref_prob / top).toFixed(1) + "%";
      bar.appendChild(ref);
    }
    list.appendChild(el("button", {class: "candidate", "data-token": c.id, title: `token id ${c.id}`,
                                   onclick: () => move("choose", {token: c.id})}, [
      el("span", {class: "num", text: c.rank <= 9 ? c.rank : ""}),
      el("span", {class: "token", text: c.eos ? "⏹ end of text" : visible(c.text)}),
      bar,
      el("span", {class: "num-right", text: percent(c.prob)}),
      el("span", {class: "num-right muted", text: c.ref_prob === null ? "" : percent(c.ref_prob)}),
    ]));
  }
}

function renderPreference(s) {
  const key = game.id + "/" + s.episode;
  const open = game.preferences && game.preferred !== key;
  $("prefer-box").classList.toggle("hidden", !game.preferences);
  $("prefer-player").disabled = !open;
  $("prefer-policy").disabled = !open;
}

async function prefer(who) {
  const episode = game.view.state.episode;
  try {
    const answer = await api("/api/play/prefer", {game: game.id, prefer: who, name: savedName()});
    game.preferred = game.id + "/" + episode;
    renderPreference(game.view.state);
    say(answer.saved ? "saved: " + (who === "player" ? "your completion" : "the policy's completion") +
        " is the better one" : answer.reason, "ok");
  } catch (err) { say(err.message, "error"); }
}

function renderResult(r) {
  $("mine").textContent = r.completion.trim() ? r.completion : "(empty completion)";
  $("theirs").textContent = r.policy.completion.trim() ? r.policy.completion : "(empty completion)";
  const body = $("figures").tBodies[0];
  clear(body);
  const rows = [["reward r_φ", r.rm_score, r.policy.rm_score, 3], ["KL (nats)", r.kl, r.policy.kl, 3],
                ["β", r.kl_coef, r.kl_coef, 3], ["return R = r − β·KL", r["return"], r.policy["return"], 3],
                ["tokens", r.num_tokens, r.policy.num_tokens, 0]];
  for (const [name, mine, theirs, digits] of rows) {
    body.appendChild(el("tr", {}, [el("td", {text: name}), el("td", {class: "mine", text: fixed(mine, digits)}),
                                   el("td", {class: "theirs", text: fixed(theirs, digits)})]));
  }
}

function newGame() {
  const prompt = $("prompt-input").value;
  return call("/api/play/new", prompt.trim() ? {prompt} : {});
}

function onKey(event) {
  if (typingIn(event) || event.ctrlKey || event.metaKey || event.altKey || !game.view || game.busy) return;
  const s = game.view.state;
  if (/^[1-9]$/.test(event.key) && !s.done) {
    const c = s.candidates[Number(event.key) - 1];
    if (c) { event.preventDefault(); move("choose", {token: c.id}); }
  } else if (event.key === " " && !s.done) { event.preventDefault(); move("sample"); }
  else if (event.key === "u" && s.tokens.length) { event.preventDefault(); move("undo"); }
}

function start() {
  showWho();
  $("new-game").addEventListener("click", newGame);
  $("again").addEventListener("click", newGame);
  $("sample").addEventListener("click", () => move("sample"));
  $("end").addEventListener("click", () => move("end"));
  $("undo").addEventListener("click", () => move("undo"));
  $("undo-end").addEventListener("click", () => move("undo"));
  $("prefer-player").addEventListener("click", () => prefer("player"));
  $("prefer-policy").addEventListener("click", () => prefer("policy"));
  api("/api/info").then((info) => { game.preferences = Boolean(info.preferences); }).catch(() => {});
  $("type").addEventListener("click", () => {
    const text = $("type-input").value;
    if (!text) { say("type some text first", "error"); return; }
    move("type", {text}).then(() => { if (!$("status").classList.contains("error")) $("type-input").value = ""; });
  });
  $("type-input").addEventListener("keydown", (event) => { if (event.key === "Enter") $("type").click(); });
  $("prompt-input").addEventListener("keydown", (event) => { if (event.key === "Enter") newGame(); });
  document.addEventListener("keydown", onKey);
}

start();
