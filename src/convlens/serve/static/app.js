// The page: a subject picker, five views chosen by the URL's hash (#network, #layer/NAME, #image,
// #embedding, #arithmetic), one module per view. Each view exports `render(root, ctx)`.
import { getJSON } from "./api.js";
import * as network from "./views/network.js";
import * as layer from "./views/layer.js";
import * as image from "./views/image.js";
import * as embedding from "./views/embedding.js";
import * as arithmetic from "./views/arithmetic.js";

const VIEWS = { network, layer, image, embedding, arithmetic };
const picker = document.getElementById("subject");
const root = document.getElementById("view");
const errorBox = document.getElementById("error");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function route() {
  const [view, ...rest] = (location.hash.slice(1) || "network").split("/");
  const mod = VIEWS[view] || network;
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  showError("");
  root.replaceChildren();
  const subject = picker.value;
  const ctx = { subject, info: subjects[subject], arg: decodeURIComponent(rest.join("/")), showError };
  try {
    // The listing is cheap (a run is loaded only when opened): the full info comes from the subject.
    ctx.info = await getJSON(`/api/subjects/${encodeURIComponent(subject)}`);
    await mod.render(root, ctx);
  } catch (e) {
    showError(e.message);
  }
}

let subjects = {};
const list = await getJSON("/api/subjects").catch((e) => { showError(e.message); return []; });
for (const s of list) {
  subjects[s.name] = s;
  picker.append(new Option(`${s.name} (${s.model})`, s.name));
}
picker.addEventListener("change", route);
window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => showError(e.reason?.message || String(e.reason)));
route();
