// The space's audit log: paged (newest page last, as the API orders it: oldest first), filtered
// by the API on action, outcome and principal.

import { enc, get } from "./api.js";
import { h, replace, table, when } from "./dom.js";

export async function render(ctx) {
  const [space] = ctx.params;
  const sp = await get(`/api/spaces/${enc(space)}`);
  ctx.header([["Spaces", "#/"], [sp.name, `#/spaces/${enc(space)}`], ["Audit log"]]);
  const field = (id, label, help) => h("div", { class: "field" },
    h("label", { for: id }, label),
    h("input", { id, name: id, type: "text", autocomplete: "off", "aria-describedby": `${id}-help` }),
    h("span", { id: `${id}-help`, class: "help" }, help));
  const form = h("form", { id: "audit-filter", class: "filters", role: "search" },
    field("f-action", "Action", "operationId, e.g. pause_rollout"),
    field("f-outcome", "Outcome", "success or an error code"),
    field("f-principal", "Principal", "principal id"),
    h("div", { class: "field" },
      h("label", { for: "f-limit" }, "Rows per page"),
      h("select", { id: "f-limit", name: "limit" }, [10, 25, 50, 100, 200].map((n) => h("option", { value: n, selected: n === 50 }, String(n))))),
    h("div", { class: "field" }, h("button", { type: "submit", id: "f-apply" }, "Apply")));
  const rows = h("div", { id: "audit-rows" });
  const pager = h("nav", { class: "pager", "aria-label": "Audit pages" });
  replace(ctx.root, h("h1", {}, `Audit log of ${sp.name}`), form, rows, pager);
  const stack = []; // cursors of the pages before this one
  let cursor = null;

  const load = async () => {
    const q = new URLSearchParams({ limit: form.querySelector("#f-limit").value });
    const set = (name, id) => {
      const v = form.querySelector(id).value.trim();
      if (v) q.set(name, v);
    };
    set("action", "#f-action");
    set("outcome", "#f-outcome");
    set("principal", "#f-principal");
    if (cursor) q.set("cursor", cursor);
    let page;
    try {
      page = await get(`/api/spaces/${enc(space)}/audit?${q}`);
    } catch (err) {
      replace(rows, ctx.showError(err));
      replace(pager);
      return;
    }
    if (!ctx.alive()) return;
    replace(rows, page.items.length === 0 ? h("p", {}, "No rows.") :
      table(null, ["When", "Action", "Resource", "Principal", "Outcome", "Request id"],
        page.items.map((r) => h("tr", { "data-audit": r.id },
          h("td", {}, when(r.at)), h("td", {}, r.action), h("td", {}, r.resource),
          h("td", {}, r.principal_id || "—"), h("td", { "data-outcome": r.outcome }, r.outcome),
          h("td", {}, h("code", {}, r.request_id)))),
        { class: "audit" }));
    const prev = h("button", { type: "button", id: "page-prev", disabled: stack.length === 0 }, "Previous page");
    const next = h("button", { type: "button", id: "page-next", disabled: !page.next_cursor }, "Next page");
    prev.addEventListener("click", () => { cursor = stack.pop() || null; load(); });
    next.addEventListener("click", () => { stack.push(cursor); cursor = page.next_cursor; load(); });
    replace(pager, prev, ` page ${stack.length + 1} `, next);
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    stack.length = 0;
    cursor = null;
    load();
  });
  await load();
  return null;
}
