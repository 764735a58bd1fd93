// The console's shell: login (a token pasted once, kept in sessionStorage), the hash router,
// and the refresh loop of the page on screen. Pages are modules of their own (page-*.js):
// each exports render(ctx) returning {refresh?, every?} and draws into ctx.root.

import { ApiError, clearToken, get, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import * as spaces from "./page-spaces.js";
import * as service from "./page-service.js";
import * as rollout from "./page-rollout.js";
import * as pods from "./page-pods.js";
import * as audit from "./page-audit.js";

const ROUTES = [
  [/^\/$/, spaces.list],
  [/^\/spaces\/([^/]+)$/, spaces.space],
  [/^\/spaces\/([^/]+)\/services\/([^/]+)$/, service.render],
  [/^\/spaces\/([^/]+)\/rollouts\/([^/]+)$/, rollout.render],
  [/^\/spaces\/([^/]+)\/pods$/, pods.render],
  [/^\/spaces\/([^/]+)\/audit$/, audit.render],
];

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const who = document.getElementById("who");
let current = null; // {timer, alive}

function stop() {
  if (current) {
    current.alive = false;
    clearTimeout(current.timer);
  }
  current = null;
}

export function announce(text) {
  const live = document.getElementById("live");
  live.textContent = text;
}

function showError(err) {
  const msg = err instanceof ApiError ? `${err.code}: ${err.detail || err.message}` : String(err);
  return h("p", { class: "error", role: "alert" }, msg);
}

function loginView(message) {
  stop();
  replace(crumbs);
  replace(who);
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, "aria-describedby": "token-help",
  });
  const form = h(
    "form",
    { class: "login", id: "login", novalidate: true },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "Admin API token"),
    input,
    h("p", { id: "token-help", class: "help" },
      "Paste a token (tak_pat_…). It is kept in this tab's sessionStorage only and sent as an ",
      h("code", {}, "Authorization: Bearer"), " header; it never goes into a URL or a cookie."),
    h("button", { type: "submit", id: "login-submit" }, "Sign in"),
    message ? h("p", { class: "error", role: "alert", id: "login-error" }, message) : null,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    if (!value) {
      replace(main, loginView("Paste a token first."));
      return;
    }
    setToken(value);
    try {
      await get("/api/spaces?limit=1");
    } catch (err) {
      clearToken();
      const why = err instanceof ApiError ? `${err.code}: ${err.detail}` : String(err);
      replace(main, loginView(`That token was refused (${why}).`));
      document.getElementById("token").focus();
      return;
    }
    route();
  });
  return form;
}

function header(trail) {
  replace(
    crumbs,
    h("ol", {}, trail.map(([label, href], i) =>
      h("li", {}, href && i < trail.length - 1 ? h("a", { href }, label) : h("span", { "aria-current": "page" }, label)))),
  );
  replace(
    who,
    h("button", { type: "button", id: "logout", onclick: () => { clearToken(); location.hash = "#/"; route(); } }, "Sign out"),
  );
}

export async function route() {
  stop();
  if (!token()) {
    replace(main, loginView());
    document.getElementById("token").focus();
    return;
  }
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const match = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  if (!match) {
    header([["Spaces", "#/"], ["Not found"]]);
    replace(main, h("p", { class: "error", role: "alert" }, `No page at ${path}.`));
    return;
  }
  const [m, page] = match;
  const me = { alive: true, timer: 0 };
  current = me;
  // Each visit draws into a container of its own: a page still loading when the operator moves
  // on keeps writing into its detached container, never over the next page.
  const root = h("div", { class: "page" }, h("p", { class: "loading" }, "Loading…"));
  replace(main, root);
  const ctx = {
    root, params: m.slice(1), announce, showError, alive: () => me.alive,
    header: (trail) => me.alive && header(trail),
  };
  let view;
  try {
    view = await page(ctx);
  } catch (err) {
    if (!me.alive) return;
    if (err instanceof ApiError && err.status === 401) {
      clearToken();
      replace(main, loginView("The token is no longer valid; sign in again."));
      return;
    }
    replace(root, showError(err));
    return;
  }
  if (!view || !view.refresh || !me.alive) return;
  const tick = async () => {
    if (!me.alive) return;
    try {
      await view.refresh();
      view.onError && view.onError(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        clearToken();
        route();
        return;
      }
      view.onError && view.onError(err);
    }
    if (me.alive) me.timer = setTimeout(tick, view.every || 2000);
  };
  me.timer = setTimeout(tick, view.every || 2000);
}

// The skip link moves the focus to the content; it must not become a route.
document.querySelector(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", route);
route();
