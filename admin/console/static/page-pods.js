// Pods: the delegation tree (parent → children), each pod's effective write regions (its
// effective scope's write rules, minus what it delegated away) and its lease's age.

import { all, enc, get } from "./api.js";
import { ago, badge, duration, h, replace } from "./dom.js";

function rule(r) {
  return `${r.target}${r.recursive ? "/**" : ""}`;
}

function podItem(pod, children, now) {
  const writes = pod.effective.allow.filter((r) => r.permission === "write");
  const denied = pod.effective.deny.filter((r) => r.permission === "write" || r.permission === "read");
  const lease = pod.lease;
  return h("li", { class: "pod", "data-pod": pod.name },
    h("div", { class: "pod-head" },
      h("strong", {}, pod.name), " ", badge(pod.state), pod.live ? badge("live") : null),
    h("dl", { class: "kv" },
      h("dt", {}, "writes"), h("dd", { "data-writes": writes.map(rule).join(" ") }, writes.length ? writes.map(rule).join(", ") : "nothing"),
      denied.length ? [h("dt", {}, "carved out"), h("dd", {}, denied.map((r) => `${rule(r)} (${r.origin}${r.child ? ` → ${r.child}` : ""})`).join(", "))] : null,
      h("dt", {}, "lease"),
      h("dd", { "data-lease": lease ? lease.status : "none" },
        lease ? `${lease.status}, taken ${ago(lease.created_at, now)} (age ${duration(now - lease.created_at)}), expires ${ago(lease.expires_at, now)}` : "none")),
    children.length ? h("ul", { class: "tree" }, children) : null);
}

export async function render(ctx) {
  const [space] = ctx.params;
  const sp = await get(`/api/spaces/${enc(space)}`);
  ctx.header([["Spaces", "#/"], [sp.name, `#/spaces/${enc(space)}`], ["Pods"]]);
  const box = h("div", { id: "pods" });
  replace(ctx.root, h("h1", {}, `Pods of ${sp.name}`),
    h("p", { class: "help" }, "The delegation tree: each pod under the pod that delegated to it, with the regions it may write now and its lease."),
    box);
  const draw = async () => {
    const pods = await all(`/api/spaces/${enc(space)}/pods`);
    if (!ctx.alive()) return;
    const now = Date.now();
    const byName = new Map(pods.map((p) => [p.name, p]));
    const byId = new Map(pods.map((p) => [p.id, p]));
    const kids = new Map();
    const roots = [];
    for (const p of pods) {
      const parent = p.parent && (byName.get(p.parent) || byId.get(p.parent));
      if (parent) {
        if (!kids.has(parent.name)) kids.set(parent.name, []);
        kids.get(parent.name).push(p);
      } else {
        roots.push(p);
      }
    }
    const build = (p, depth) => podItem(p, depth > 32 ? [] : (kids.get(p.name) || []).map((c) => build(c, depth + 1)), now);
    replace(box, pods.length === 0 ? h("p", {}, "No pods in this space.") : h("ul", { class: "tree root" }, roots.map((p) => build(p, 0))));
  };
  await draw();
  return { refresh: draw, every: 5000 };
}
