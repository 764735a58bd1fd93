// Charts drawn as SVG by our own small code: a meter bar, a split bar, a line chart and a
// stage timeline. Sizes are SVG attributes (viewBox units), never inline style.

import { h, s, num, pct } from "./dom.js";

const PALETTE = 6; // .series-0 … .series-5 in console.css

/** Usage of one meter against its quota: a bar plus "units / quota (percent)". */
export function meterBar(meter, usage) {
  const { units, quota, percent } = usage;
  const frac = quota > 0 ? Math.min(1, units / quota) : units > 0 ? 1 : 0;
  const level = percent === null ? "none" : percent >= 100 ? "over" : percent >= 80 ? "warn" : "ok";
  // quota -1: every unit is paid from the balance; 0: the meter is not on the plan.
  const of = quota > 0 ? num(quota) : quota < 0 ? "pay per unit" : "not on the plan";
  const label = `${num(units)} / ${of}${percent === null ? "" : ` (${percent.toFixed(1)} %)`}`;
  return h(
    "div",
    { class: `meter meter-${level}`, "data-meter": meter, "data-units": units, "data-quota": quota },
    h("span", { class: "meter-name" }, meter),
    s(
      "svg",
      { class: "meter-bar", viewBox: "0 0 200 12", preserveAspectRatio: "none", role: "img", "aria-label": `${meter}: ${label}` },
      s("rect", { class: "meter-track", x: 0, y: 0, width: 200, height: 12, rx: 3 }),
      s("rect", { class: "meter-fill", x: 0, y: 0, width: (200 * frac).toFixed(2), height: 12, rx: 3 }),
    ),
    h("span", { class: "meter-figures" }, label),
  );
}

/** The live split: one segment per deployment by weight (basis points of 10000). */
export function splitBar(segments) {
  const total = segments.reduce((a, x) => a + x.weight, 0) || 1;
  let x = 0;
  const rects = [];
  segments.forEach((seg, i) => {
    const w = (1000 * seg.weight) / total;
    rects.push(
      s(
        "rect",
        { class: `series-${i % PALETTE}`, x: x.toFixed(2), y: 0, width: w.toFixed(2), height: 24 },
        s("title", {}, `${seg.label}: ${(seg.weight / 100).toFixed(2)} %`),
      ),
    );
    x += w;
  });
  return h(
    "figure",
    { class: "split" },
    s("svg", { class: "split-bar", viewBox: "0 0 1000 24", preserveAspectRatio: "none", role: "img", "aria-label": segments.map((g) => `${g.label} ${(g.weight / 100).toFixed(2)} %`).join(", ") }, rects),
    h(
      "figcaption",
      { class: "legend" },
      segments.map((seg, i) =>
        h(
          "span",
          { class: "legend-item", "data-deployment": seg.id, "data-weight": seg.weight },
          s("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" }, s("rect", { class: `series-${i % PALETTE}`, width: 10, height: 10 })),
          ` ${seg.label} `,
          h("strong", {}, `${(seg.weight / 100).toFixed(2).replace(/\.00$/, "")} %`),
        ),
      ),
    ),
  );
}

/** A line chart of several series sharing an x axis (ms timestamps). */
export function lineChart(title, series, { format = (v) => String(v), yMin = 0 } = {}) {
  const W = 600, H = 180, L = 52, R = 10, T = 10, B = 24;
  const xs = series.flatMap((ser) => ser.points.map((p) => p.x));
  const ys = series.flatMap((ser) => ser.points.map((p) => p.y).filter((v) => v !== null));
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y1 = Math.max(yMin, ...ys);
  if (!(y1 > 0)) y1 = 1;
  const px = (x) => L + ((x - x0) / Math.max(1, x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - y / y1) * (H - T - B);
  const grid = [0, 0.5, 1].map((f) =>
    s("g", { class: "grid" },
      s("line", { x1: L, x2: W - R, y1: py(f * y1), y2: py(f * y1) }),
      s("text", { x: L - 4, y: py(f * y1) + 4, "text-anchor": "end" }, format(f * y1))),
  );
  const ticks = xs.length
    ? [x0, x1].map((x, i) =>
        s("text", { class: "tick", x: px(x), y: H - 6, "text-anchor": i ? "end" : "start" },
          new Date(x).toISOString().slice(11, 16)))
    : [];
  const lines = series.map((ser, i) => {
    const pts = ser.points.filter((p) => p.y !== null).map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`);
    return s("polyline", { class: `line series-${i % PALETTE}`, points: pts.join(" "), "data-series": ser.name },
      s("title", {}, ser.name));
  });
  return h(
    "figure",
    { class: "chart" },
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, grid, ticks, lines),
    h("figcaption", { class: "legend" }, h("span", { class: "chart-title" }, title),
      series.map((ser, i) =>
        h("span", { class: "legend-item" },
          s("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" }, s("rect", { class: `series-${i % PALETTE}`, width: 10, height: 10 })),
          ` ${ser.name}`))),
  );
}

/** A rollout's stages as a timeline: done, current (with the state), still to come. */
export function timeline(stages, current, state) {
  // The API's stages end with the promotion to 100 % (added when the manifest left it out).
  const items = stages.map((st) => ({ weight: st.weight, pause: st.pause_minutes }));
  const n = items.length;
  const W = 600, H = 64, pad = 40;
  const step = n > 1 ? (W - 2 * pad) / (n - 1) : 0;
  const ended = ["completed", "aborted", "failed"].includes(state);
  const nodes = [];
  items.forEach((it, i) => {
    const idx = i + 1;
    let phase = idx < current ? "done" : idx === current ? "current" : "todo";
    if (state === "completed") phase = "done";
    if ((state === "aborted" || state === "failed") && idx >= current) phase = idx === current ? "stopped" : "todo";
    const cx = pad + i * step;
    nodes.push(
      s("g", { class: `stage stage-${phase}`, "data-stage": idx, "data-phase": phase },
        i > 0 ? s("line", { class: "stage-link", x1: cx - step, x2: cx, y1: 22, y2: 22 }) : null,
        s("circle", { cx, cy: 22, r: 9 }),
        s("text", { x: cx, y: 50, "text-anchor": "middle" }, `${it.weight} %`),
        s("title", {}, `stage ${idx}: ${it.weight} %${idx === n ? " (promotion)" : `, pause ${it.pause} min`}`)),
    );
  });
  // Links first so the circles paint over them.
  const links = nodes.map((g) => g.querySelector("line")).filter(Boolean);
  return s("svg", { class: `timeline${ended ? " ended" : ""}`, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `stages ${items.map((it) => `${it.weight} %`).join(" → ")}; at stage ${current}, ${state}` }, links, nodes);
}

export { pct };
