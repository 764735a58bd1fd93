// One service: hostnames with their verification state, deployments with their snapshots
// (masked by the API), the live traffic split, and requests/s and error rate per deployment
// over the last 30 minutes (GET …/services/{service}/traffic, from the gateways' counters).

import { all, enc, get } from "./api.js";
import { badge, h, num, pct, replace, table, when } from "./dom.js";
import { lineChart, splitBar } from "./charts.js";

const ROUTED = ["active", "canary"];

function snapshotView(snap) {
  const part = (name, map) => {
    const keys = Object.keys(map || {});
    return keys.length === 0 ? null : h("div", { class: "snap-part" },
      h("h4", {}, name),
      h("dl", { class: "kv" }, keys.flatMap((k) => [h("dt", {}, k), h("dd", { "data-masked": name !== "config" ? "true" : null }, String(map[k]))])));
  };
  const config = snap.config || {};
  const plain = Object.fromEntries(Object.entries(config).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]));
  return h("div", { class: "snapshot", "data-snapshot": snap.id },
    part("config", plain), part("env", snap.env), part("secrets", snap.secrets), part("bindings", snap.bindings));
}

function deploymentRows(deps, snaps) {
  return deps.map((d) => {
    const snap = snaps.get(d.snapshot_id);
    return h("tr", { "data-deployment": d.id },
      h("td", {}, `v${d.number}`),
      h("td", {}, badge(d.routing_status)),
      h("td", {}, `${(d.routing_weight / 100).toFixed(2).replace(/\.00$/, "")} %`),
      h("td", {}, badge(d.status)),
      h("td", {}, when(d.created_at)),
      h("td", {}, snap
        ? h("details", {}, h("summary", {}, `snapshot ${d.snapshot_id}`), snapshotView(snap))
        : h("code", {}, d.snapshot_id)));
  });
}

function trafficCharts(traffic) {
  const label = (d) => `v${d.number} (${d.routing_status})`;
  const rps = traffic.deployments.map((d) => ({
    name: label(d), points: d.points.map((p) => ({ x: p.at, y: p.requests_per_second })),
  }));
  const err = traffic.deployments.map((d) => ({
    name: label(d), points: d.points.map((p) => ({ x: p.at, y: p.error_rate })),
  }));
  return h("div", { class: "charts" },
    lineChart(`Requests/s per deployment, last ${traffic.minutes} min`, rps, { format: (v) => v.toFixed(v < 10 ? 2 : 0) }),
    lineChart(`Error rate (5xx) per deployment, last ${traffic.minutes} min`, err, { format: (v) => pct(v, 1), yMin: 0.01 }),
    h("p", { class: "help totals" }, "One point per minute, from the gateways' counters; the last minute is still filling."),
    table("Totals over the window", ["Deployment", "Requests", "Errors", "Error rate"],
      traffic.deployments.map((d) => [label(d), num(d.requests), num(d.errors), d.requests ? pct(d.errors / d.requests) : "—"]),
      { class: "totals", "data-traffic": "totals" }));
}

export async function render(ctx) {
  const [space, ref] = ctx.params;
  const base = `/api/spaces/${enc(space)}/services/${enc(ref)}`;
  const [sp, svc] = await Promise.all([get(`/api/spaces/${enc(space)}`), get(base)]);
  ctx.header([["Spaces", "#/"], [sp.name, `#/spaces/${enc(space)}`], [`Service ${svc.name}`]]);
  const split = h("div", { id: "split" });
  const charts = h("div", { id: "traffic" });
  const hosts = h("div", { id: "hostnames" });
  const depsBox = h("div", { id: "deployments" });
  const problem = h("div", { id: "problem" });
  replace(
    ctx.root,
    h("h1", {}, `Service ${svc.name}`),
    h("p", { class: "meta" }, badge(svc.status), ` · ${svc.id}`),
    problem,
    h("section", { "aria-labelledby": "h-split" }, h("h2", { id: "h-split" }, "Traffic split now"), split),
    h("section", { "aria-labelledby": "h-traffic" }, h("h2", { id: "h-traffic" }, "Requests and errors"), charts),
    h("section", { "aria-labelledby": "h-hosts" }, h("h2", { id: "h-hosts" }, "Hostnames"), hosts),
    h("section", { "aria-labelledby": "h-deps" }, h("h2", { id: "h-deps" }, "Deployments"), depsBox),
  );
  const snaps = new Map();
  let lastDeps = "";
  const draw = async () => {
    const [hostnames, deps, traffic] = await Promise.all([
      all(`${base}/hostnames`),
      all(`${base}/deployments`),
      get(`${base}/traffic?minutes=30`).catch((err) => ({ error: err })),
    ]);
    const shown = deps.slice().sort((a, b) => b.number - a.number).slice(0, 10);
    await Promise.all(shown.filter((d) => !snaps.has(d.snapshot_id)).map(async (d) => {
      try {
        snaps.set(d.snapshot_id, await get(`/api/spaces/${enc(space)}/snapshots/${enc(d.snapshot_id)}`));
      } catch { /* shown as its id */ }
    }));
    if (!ctx.alive()) return;
    const routed = deps.filter((d) => d.routing_weight > 0 && ROUTED.includes(d.routing_status))
      .sort((a, b) => b.routing_weight - a.routing_weight);
    replace(split, routed.length === 0 ? h("p", {}, "Nothing is routed.") :
      splitBar(routed.map((d) => ({ id: d.id, weight: d.routing_weight, label: `v${d.number} (${d.routing_status})` }))));
    replace(charts, traffic.error ? ctx.showError(traffic.error) : trafficCharts(traffic));
    replace(hosts, hostnames.length === 0 ? h("p", {}, "No hostnames.") :
      table(null, ["Hostname", "Status", "Routed", "Verified", "Proof (TXT)"], hostnames.map((x) => [
        h("span", { "data-host": x.host }, x.host), badge(x.status), x.routed ? "yes" : "no",
        x.verified_at ? when(x.verified_at) : x.expires_at ? `until ${when(x.expires_at)}` : "—",
        x.verification ? h("code", {}, `${x.verification.name} = ${x.verification.value}`) : "—",
      ])));
    // Redraw the table only when a deployment changed, so an open snapshot stays open.
    const sig = JSON.stringify(shown.map((d) => [d.id, d.routing_status, d.routing_weight, d.status, snaps.has(d.snapshot_id)]));
    if (sig !== lastDeps) {
      lastDeps = sig;
      replace(depsBox, table(null, ["Version", "Routing", "Weight", "Status", "Created", "Snapshot (masked)"], deploymentRows(shown, snaps)),
        deps.length > shown.length ? h("p", { class: "help" }, `${deps.length - shown.length} older deployments not shown.`) : null);
    }
  };
  await draw();
  return {
    refresh: draw,
    every: 2000,
    onError: (err) => replace(problem, err ? ctx.showError(err) : null),
  };
}
