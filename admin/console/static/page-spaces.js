// Spaces: the list (plan, blocked state, usage per meter), and one space's page (the same
// figures, its services, its rollouts, links to its pods and audit log).

import { all, enc, get } from "./api.js";
import { badge, h, num, replace, table, when } from "./dom.js";
import { meterBar } from "./charts.js";

const ADMIN_ROLES = ["admin", "owner"];
const LIST_LIMIT = 100;

async function billingOf(id) {
  // A space without a billing account (or a token without billing:read) shows no usage.
  const [account, usage] = await Promise.allSettled([
    get(`/api/spaces/${enc(id)}/billing`),
    get(`/api/spaces/${enc(id)}/usage`),
  ]);
  return {
    account: account.status === "fulfilled" ? account.value : null,
    usage: usage.status === "fulfilled" ? usage.value : null,
    error: usage.status === "rejected" ? usage.reason : null,
  };
}

function usageBlock(billing, showError) {
  const { account, usage, error } = billing;
  const status = account ? account.status : null;
  return h(
    "div",
    { class: "usage" },
    h("p", { class: "plan" },
      "Plan ", h("strong", { "data-plan": usage ? usage.plan : "" }, usage ? usage.plan : account ? account.plan : "—"),
      status ? [" · ", badge(status, status === "blocked" ? "blocked" : "active")] : null,
      account ? ` · balance ${(account.balance_cents / 100).toFixed(2)}` : null,
      usage ? ` · period ${usage.period}` : null),
    status === "blocked"
      ? h("p", { class: "error", role: "alert", "data-blocked": "true" }, "Blocked: the gateway answers 402 for this space's hostnames until usage is back under quota or the plan changes.")
      : null,
    usage
      ? h("div", { class: "meters", "aria-label": "Usage this period" },
          Object.entries(usage.meters).map(([meter, u]) => meterBar(meter, u)))
      : error ? showError(error) : null,
  );
}

export async function list(ctx) {
  ctx.header([["Spaces"]]);
  // One page of spaces (each costs two more calls for its usage); a platform with more says so.
  const page = await get(`/api/spaces?limit=${LIST_LIMIT}`);
  const items = page.items;
  const billing = await Promise.all(items.map((sp) => billingOf(sp.id)));
  replace(
    ctx.root,
    h("h1", {}, "Spaces"),
    items.length === 0 ? h("p", {}, "No spaces yet.") : null,
    page.next_cursor ? h("p", { class: "help" }, `Showing the first ${LIST_LIMIT} spaces (GET /api/spaces pages through all of them).`) : null,
    h("ul", { class: "cards" },
      items.map((sp, i) =>
        h("li", { class: "card", "data-space": sp.id },
          h("h2", {}, h("a", { href: `#/spaces/${enc(sp.id)}` }, sp.name)),
          h("p", { class: "meta" }, `${sp.kind} · your role: ${sp.role || "—"} · ${sp.id}`),
          usageBlock(billing[i], ctx.showError)))),
  );
  return null;
}

async function rolloutsOf(id) {
  const apps = await all(`/api/spaces/${enc(id)}/app-deployments`);
  const staged = apps.filter((a) => a.strategy === "staged").slice(-20).reverse();
  const found = await Promise.allSettled(
    staged.map((a) => get(`/api/spaces/${enc(id)}/app-deployments/${enc(a.id)}/rollout`)),
  );
  return staged
    .map((a, i) => [a, found[i].status === "fulfilled" ? found[i].value : null])
    .filter(([, r]) => r);
}

export async function space(ctx) {
  const [id] = ctx.params;
  const sp = await get(`/api/spaces/${enc(id)}`);
  ctx.header([["Spaces", "#/"], [sp.name]]);
  const body = h("div", { id: "space-body" });
  replace(
    ctx.root,
    h("h1", {}, `Space ${sp.name}`),
    h("p", { class: "meta" }, `${sp.kind} · your role: `, h("span", { id: "role", "data-role": sp.role || "" }, sp.role || "—"), ` · ${sp.id}`),
    h("nav", { class: "tabs", "aria-label": "Space pages" },
      h("a", { href: `#/spaces/${enc(id)}/pods` }, "Pods"),
      ADMIN_ROLES.includes(sp.role) ? h("a", { href: `#/spaces/${enc(id)}/audit` }, "Audit log") : null),
    body,
  );
  let drawn = "";
  const draw = async () => {
    const [billing, services, rollouts] = await Promise.all([
      billingOf(id),
      all(`/api/spaces/${enc(id)}/services`),
      rolloutsOf(id).catch(() => []),
    ]);
    if (!ctx.alive()) return;
    const sig = JSON.stringify([billing.account, billing.usage, services, rollouts.map(([a, r]) => [a.id, r.state, r.stage, r.weight])]);
    if (sig === drawn) return; // unchanged: keep the DOM (and the keyboard focus) as it is
    drawn = sig;
    replace(
      body,
      h("section", { "aria-labelledby": "h-usage" }, h("h2", { id: "h-usage" }, "Usage"), h("div", { class: "usage-wide" }, usageBlock(billing, ctx.showError))),
      h("section", { "aria-labelledby": "h-services" },
        h("h2", { id: "h-services" }, "Services"),
        services.length === 0 ? h("p", {}, "No services yet.") :
          table(null, ["Service", "Status", "Hostnames", "Updated"],
            services.map((svc) => [
              h("a", { href: `#/spaces/${enc(id)}/services/${enc(svc.id)}`, "data-service": svc.name }, svc.name),
              badge(svc.status),
              svc.hostnames.join(", ") || "—",
              when(svc.updated_at),
            ]))),
      h("section", { "aria-labelledby": "h-rollouts" },
        h("h2", { id: "h-rollouts" }, "Staged rollouts"),
        rollouts.length === 0 ? h("p", {}, "No staged rollouts.") :
          table(null, ["App deployment", "State", "Stage", "Weight", "Started"],
            rollouts.map(([app, r]) => [
              h("a", { href: `#/spaces/${enc(id)}/rollouts/${enc(app.id)}`, "data-rollout": app.id }, `${app.name} (${app.id})`),
              badge(r.state),
              `${r.stage} of ${r.stages.length}`,
              `${r.weight} %`,
              when(r.created_at),
            ]))),
    );
  };
  await draw();
  return { refresh: draw, every: 5000 };
}
