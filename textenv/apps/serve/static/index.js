// The start page: the labeller's name and what this server offers.
"use strict";

async function start() {
  showWho();
  const input = document.getElementById("name");
  input.value = savedName();
  document.getElementById("save-name").addEventListener("click", () => {
    const name = input.value.trim();
    if (!name) { say("type a name first", "error"); return; }
    saveName(name);
    showWho();
    say("saved: " + name, "ok");
  });
  try {
    const info = await api("/api/info");
    const labelInfo = document.getElementById("label-info");
    if (info.label && info.labelling) {
      labelInfo.textContent = `${info.labelling.done} of ${info.labelling.items} items labelled`;
    } else {
      labelInfo.textContent = "off: the server was started without --data and --output";
    }
    document.getElementById("play-info").textContent = info.play ? `top ${info.top_k} candidates per step` :
      "off: the server was started with --no-play";
  } catch (err) { say(err.message, "error"); }
}

start();
