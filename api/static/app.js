// Status page of the Morpheus daemon: polls the JSON API once a second and
// renders, per program, its running version, the ns/packet series as an
// SVG chart and the hot keys of its maps. No dependencies: the daemon may
// run on machines without internet access.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // A token can be handed over in the URL fragment (never sent to the
  // server in the request line): http://127.0.0.1:9090/#token=SECRET
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("morpheus-token", fragment.get("token"));
  }
  const token = sessionStorage.getItem("morpheus-token");

  async function get(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const resp = await fetch(path, { headers, cache: "no-store" });
    const body = await resp.json();
    if (!resp.ok) {
      throw new Error(path + ": " + (body.error || resp.status));
    }
    return body;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      e.setAttribute(k, v);
    }
    for (const c of children) {
      e.append(c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      e.setAttribute(k, v);
    }
    return e;
  }

  // chart draws ns/packet over time; intervals without packets are gaps.
  function chart(samples) {
    const W = 500, H = 160, L = 44, R = 8, T = 8, B = 18;
    const s = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
    const pts = samples.filter((p) => p.packets > 0);
    s.setAttribute("data-points", String(pts.length));
    s.setAttribute("aria-label", "ns per packet, " + pts.length + " samples");
    s.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    s.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    if (pts.length === 0) {
      const t = svg("text", { x: L + 8, y: H / 2 });
      t.textContent = "no packets yet";
      s.append(t);
      return s;
    }
    const t0 = Date.parse(samples[0].t), t1 = Date.parse(samples[samples.length - 1].t);
    const span = Math.max(t1 - t0, 1000);
    const max = Math.max(...pts.map((p) => p.ns_per_packet)) * 1.1 || 1;
    const x = (p) => L + ((Date.parse(p.t) - t0) / span) * (W - L - R);
    const y = (p) => H - B - (p.ns_per_packet / max) * (H - T - B);
    const label = (ty, text) => {
      const e = svg("text", { x: 2, y: ty });
      e.textContent = text;
      s.append(e);
    };
    label(T + 8, max.toFixed(0) + " ns");
    label(H - B, "0");
    const span_s = svg("text", { x: W - R - 60, y: H - 4 });
    span_s.textContent = "last " + Math.round(span / 1000) + " s";
    s.append(span_s);
    // One polyline per run of consecutive samples with packets.
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        s.append(svg("polyline", {
          class: "series", fill: "none", stroke: "#2364d2", "stroke-width": 2,
          points: run.map((p) => x(p).toFixed(1) + "," + y(p).toFixed(1)).join(" "),
        }));
      }
      run = [];
    };
    for (const p of samples) {
      if (p.packets > 0) {
        run.push(p);
      } else {
        flush();
      }
    }
    flush();
    for (const p of pts) {
      const c = svg("circle", { class: "pt", cx: x(p).toFixed(1), cy: y(p).toFixed(1), r: 2.5, fill: "#2364d2" });
      const tip = svg("title");
      tip.textContent = `${p.ns_per_packet.toFixed(1)} ns/packet, ${p.pps.toFixed(0)} pps, version ${p.version}`;
      c.append(tip);
      s.append(c);
    }
    return s;
  }

  function heatTable(mapName, keys) {
    const box = el("div", { class: "heatmap", "data-map": mapName });
    box.append(el("h3", {}, "hot keys: " + mapName));
    if (!keys || keys.length === 0) {
      box.append(el("div", { class: "empty" }, "no samples"));
      return box;
    }
    const max = keys[0].count || 1;
    const tb = el("tbody");
    for (const k of keys) {
      const bar = el("div", { class: "bar" });
      bar.style.width = ((100 * k.count) / max).toFixed(1) + "%";
      tb.append(el("tr", { class: "hot" },
        el("td", { class: "key" }, k.key),
        el("td", { class: "count" }, String(k.count)),
        el("td", { class: "barcell" }, bar)));
    }
    box.append(el("table", {}, tb));
    return box;
  }

  function programCard(p, samples, heat) {
    const id = p.nf ? p.nf + ":" + p.name : p.name;
    const card = el("article", { class: "program", "data-program": id });
    const title = el("h2", {}, id);
    if (!p.enabled) {
      title.append(el("span", { class: "badge disabled" }, "disabled"));
    } else if (p.optimized) {
      title.append(el("span", { class: "badge optimized" }, "optimized"));
    } else {
      title.append(el("span", { class: "badge" }, "original"));
    }
    if (p.profiling) {
      title.append(el("span", { class: "badge" }, "profiling"));
    }
    card.append(title);
    const version = el("span", { class: "version" }, "version " + p.version);
    card.append(el("div", { class: "meta" }, version,
      ` · prog id ${p.program_id} · ${p.instructions_original} → ${p.instructions_running} insns` +
      (p.attach ? " · " + p.attach.join(", ") : "")));
    if (p.passes && p.passes.length) {
      card.append(el("div", { class: "meta" }, "passes: " +
        p.passes.map((x) => `${x.name} (${x.changes})`).join(", ")));
    }
    if (p.guards && p.guards.length) {
      card.append(el("div", { class: "meta" }, "guards: " + p.guards.map((g) =>
        g.map + (g.elided ? " (elided)" : "") + (g.tripped ? " (tripped)" : "")).join(", ")));
    }
    if (p.last_outcome) {
      card.append(el("div", { class: "meta" }, "last cycle: " + p.last_outcome + (p.last_reason ? " — " + p.last_reason : "")));
    }
    const last = samples.filter((s) => s.packets > 0).pop();
    card.append(el("h3", {}, "ns/packet" + (last ? ` (now ${last.ns_per_packet.toFixed(1)}, ${last.pps.toFixed(0)} pps)` : "")));
    card.append(chart(samples));
    const hm = (heat && heat.maps) || {};
    for (const m of p.maps || []) {
      if (m in hm) {
        card.append(heatTable(m, hm[m]));
      }
    }
    return card;
  }

  function renderStats(st) {
    const box = document.getElementById("stats");
    box.replaceChildren();
    for (const [k, label] of [["cycles", "cycles"], ["swaps", "swaps"], ["verifier_rejections", "verifier rejections"],
      ["differential_failures", "differential failures"], ["guard_bumps", "guard bumps"], ["deoptimizations", "de-optimizations"],
      ["profile_windows", "profile windows"]]) {
      box.append(el("div", { class: "stat" }, el("b", {}, String(st[k] || 0)), label));
    }
  }

  function renderEvents(evs) {
    const tb = document.querySelector("#events tbody");
    tb.replaceChildren();
    for (const e of evs.slice().reverse()) {
      const what = [e.nf, e.program || e.map].filter(Boolean).join(":");
      const detail = (e.message || "") + (e.duration_ns ? ` ${(e.duration_ns / 1e6).toFixed(1)} ms` : "");
      tb.append(el("tr", {}, el("td", {}, String(e.seq)), el("td", {}, new Date(e.time).toLocaleTimeString()),
        el("td", {}, e.kind), el("td", {}, what), el("td", {}, detail)));
    }
  }

  async function refresh() {
    const status = document.getElementById("status");
    try {
      const [progs, series, heat, stats, events] = await Promise.all([
        get("/v1/programs"), get("/v1/series"), get("/v1/heatmaps"), get("/v1/stats"), get("/v1/events?limit=20"),
      ]);
      const main = document.getElementById("programs");
      main.replaceChildren(...progs.map((p) => {
        const id = p.nf ? p.nf + ":" + p.name : p.name;
        return programCard(p, series.programs[id] || [], heat[p.nf || ""]);
      }));
      renderStats(stats);
      renderEvents(events);
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.className = "status";
      document.body.setAttribute("data-ready", "true");
    } catch (err) {
      status.textContent = String(err);
      status.className = "status error";
    }
  }

  refresh();
  setInterval(refresh, 1000);
})();
