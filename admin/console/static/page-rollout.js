// A staged rollout: its stages as a timeline, the weight now, the gate's inputs against the
// limits, the history with reasons, and the operator's actions (admins only; the API decides,
// the page shows its answer). Refreshed every second without a reload.

import { ApiError, call, enc, get } from "./api.js";
import { ago, badge, h, num, pct, replace, table, when } from "./dom.js";
import { timeline } from "./charts.js";

const ADMIN_ROLES = ["admin", "owner"];
const ACTIONS = [
  ["pause", "Pause", ["in_progress"]],
  ["resume", "Resume", ["paused"]],
  ["promote", "Promote", ["in_progress", "paused"]],
  ["abort", "Abort", ["in_progress", "paused"]],
];

function gateView(r) {
  const hc = r.health_check;
  const limits = h("dl", { class: "kv limits" },
    h("dt", {}, "error rate threshold"), h("dd", {}, pct(hc.error_rate_threshold)),
    h("dt", {}, "minimum requests"), h("dd", {}, num(hc.min_requests)),
    h("dt", {}, "window"), h("dd", {}, `${hc.window_minutes} min`),
    h("dt", {}, "p99 latency limit"), h("dd", {}, hc.p99_latency_ms === null ? "none" : `${hc.p99_latency_ms} ms`));
  if (!r.gate) return h("div", {}, limits, h("p", {}, "The gate is not measuring: the rollout has ended."));
  const g = r.gate;
  const over = (bad) => (bad ? "over" : "within");
  return h("div", {},
    limits,
    h("p", {}, "Verdict ", badge(g.verdict), " — ", h("span", { id: "gate-reason" }, g.reason)),
    table(`Measured ${when(g.measured_at)} over ${when(g.window_start)} – ${when(g.window_end)}`,
      ["Service", "Canary", "Requests (min)", "Errors", "Error rate (limit)", "p99 (limit)", "Verdict"],
      g.services.map((leg) => h("tr", { "data-leg": leg.service },
        h("td", {}, leg.service),
        h("td", {}, h("code", {}, leg.deployment_id)),
        h("td", { class: leg.requests < hc.min_requests ? "under" : "within", "data-requests": leg.requests },
          `${num(leg.requests)} (${num(hc.min_requests)})`),
        h("td", {}, num(leg.errors)),
        h("td", { class: over(leg.error_rate !== null && leg.error_rate > hc.error_rate_threshold) },
          `${pct(leg.error_rate)} (${pct(hc.error_rate_threshold)})`),
        h("td", { class: over(hc.p99_latency_ms !== null && leg.p99_ms !== null && leg.p99_ms > hc.p99_latency_ms) },
          `${leg.p99_ms === null ? "—" : `${leg.p99_ms.toFixed(1)} ms`} (${hc.p99_latency_ms === null ? "none" : `${hc.p99_latency_ms} ms`})`),
        h("td", {}, badge(leg.verdict)))),
      { class: "gate" }));
}

function historyView(r) {
  return table(null, ["When", "Action", "State", "Weight", "By", "Reason"],
    r.history.slice().reverse().map((e) => h("tr", { "data-action": e.action },
      h("td", {}, when(e.at)),
      h("td", {}, e.action),
      h("td", {}, `${e.from_state || "—"} → ${e.to_state}`),
      h("td", {}, `${e.from_weight === null ? "—" : `${e.from_weight} %`} → ${e.to_weight} %`),
      h("td", {}, e.actor === "principal" ? `principal ${e.principal_id}` : e.actor),
      h("td", {}, e.reason))),
    { class: "history" });
}

export async function render(ctx) {
  const [space, app] = ctx.params;
  const path = `/api/spaces/${enc(space)}/app-deployments/${enc(app)}/rollout`;
  const [sp, first] = await Promise.all([get(`/api/spaces/${enc(space)}`), get(path)]);
  ctx.header([["Spaces", "#/"], [sp.name, `#/spaces/${enc(space)}`], [`Rollout of ${first.app}`]]);
  const canAct = ADMIN_ROLES.includes(sp.role);
  const summary = h("div", { id: "summary" });
  const stages = h("div", { id: "stages" });
  const gate = h("div", { id: "gate" });
  const history = h("div", { id: "history" });
  const answer = h("output", { id: "answer", class: "answer", "aria-live": "polite" });
  const problem = h("div", { id: "problem" });
  const reason = h("input", { id: "reason", name: "reason", type: "text", maxlength: 500, autocomplete: "off" });
  const buttons = new Map();
  let doc = first;

  const act = async (action) => {
    // The two actions that end the rollout ask first (confirm() is the browser's own dialog).
    const final = { abort: "send all traffic back to the baseline", promote: "make the canary take 100 %" };
    if (final[action] && !window.confirm(`${action[0].toUpperCase()}${action.slice(1)} this rollout: ${final[action]}?`)) return;
    const btn = buttons.get(action);
    btn.disabled = true;
    try {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      const res = await call("POST", `${path}/${action}`, body);
      doc = res.data;
      replace(answer, h("span", { class: "ok", "data-status": res.status, "data-state": doc.state },
        `${action}: HTTP ${res.status} — the rollout is ${doc.state}`));
      reason.value = "";
      ctx.announce(`${action}: the rollout is ${doc.state}`);
      draw(doc);
    } catch (err) {
      const text = err instanceof ApiError ? `${action}: HTTP ${err.status} ${err.code} — ${err.detail}` : `${action}: ${err}`;
      replace(answer, h("span", { class: "error", role: "alert", "data-status": err.status || 0 }, text));
      ctx.announce(text);
    } finally {
      sync(doc);
    }
  };

  const actions = canAct
    ? h("form", { id: "actions", class: "actions", "aria-labelledby": "h-actions", onsubmit: (ev) => ev.preventDefault() },
        h("h2", { id: "h-actions" }, "Actions"),
        h("label", { for: "reason" }, "Reason (optional, goes into the history)"),
        reason,
        h("div", { class: "buttons" }, ACTIONS.map(([action, label]) => {
          const b = h("button", { type: "button", id: `action-${action}`, "data-action": action, onclick: () => act(action) }, label);
          buttons.set(action, b);
          return b;
        })),
        answer)
    : h("p", { id: "read-only", class: "help" }, `Read-only: your role here is ${sp.role || "none"}; pausing, resuming, aborting or promoting needs admin.`);

  function sync(r) {
    for (const [action, , states] of ACTIONS) {
      const b = buttons.get(action);
      if (b) b.disabled = !states.includes(r.state);
    }
  }

  // Redraw a part only when what it shows changed: a keyboard user's focus (a link in the
  // summary) survives the refresh, and the page does not flicker.
  const drawn = { main: "", gate: "" };

  function draw(r) {
    const now = Date.now();
    const { gate: measured, ...rest } = r;
    const gateSig = JSON.stringify(measured ? { ...measured, measured_at: 0 } : null);
    if (gateSig !== drawn.gate) {
      drawn.gate = gateSig;
      replace(gate, gateView(r));
    }
    const mainSig = JSON.stringify(rest);
    sync(r);
    if (mainSig === drawn.main) return;
    drawn.main = mainSig;
    replace(summary,
      h("p", { class: "big" },
        "State ", h("span", { id: "state", "data-state": r.state }, badge(r.state)),
        " · stage ", h("strong", { id: "stage", "data-stage": r.stage }, `${r.stage} of ${r.stages.length}`),
        " · canary weight ", h("strong", { id: "weight", "data-weight": r.weight }, `${r.weight} %`)),
      h("p", { class: "meta" },
        `started ${when(r.created_at)} · current weight since ${when(r.stage_started_at)}`,
        r.next_decision_at ? ` · next decision ${when(r.next_decision_at)}` : "",
        r.auto_promote ? " · promotes automatically" : " · waits for an operator to promote"),
      r.waiting ? h("p", { class: "waiting" }, `Waiting: ${r.waiting}`) : null,
      r.fail_reason ? h("p", { class: "error" }, `Failed: ${r.fail_reason}`) : null,
      table(null, ["Service", "Canary", "Canary weight", "Baseline", "Baseline weight"],
        r.services.map((leg) => [
          h("a", { href: `#/spaces/${enc(space)}/services/${enc(leg.service_id)}` }, leg.service),
          h("code", {}, leg.canary_deployment_id), `${(leg.canary_weight / 100).toFixed(2).replace(/\.00$/, "")} %`,
          h("code", {}, leg.baseline_deployment_id), `${(leg.baseline_weight / 100).toFixed(2).replace(/\.00$/, "")} %`,
        ])));
    replace(stages, timeline(r.stages, r.stage, r.state));
    replace(history, historyView(r));
  }

  replace(
    ctx.root,
    h("h1", {}, `Rollout of ${first.app}`),
    h("p", { class: "meta" }, `${first.id} · app deployment ${first.app_deployment_id}`),
    problem,
    summary,
    h("section", { "aria-labelledby": "h-stages" }, h("h2", { id: "h-stages" }, "Stages"), stages),
    actions,
    h("section", { "aria-labelledby": "h-gate" }, h("h2", { id: "h-gate" }, "Health gate: inputs against the limits"), gate),
    h("section", { "aria-labelledby": "h-history" }, h("h2", { id: "h-history" }, "History"), history),
  );
  draw(first);
  return {
    refresh: async () => {
      const r = await get(path);
      if (ctx.alive()) {
        doc = r;
        draw(r);
      }
    },
    every: 1000,
    onError: (err) => replace(problem, err ? ctx.showError(err) : null),
  };
}
