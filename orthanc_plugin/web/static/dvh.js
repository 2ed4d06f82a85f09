/* The plan page's dose-volume histogram: one global, window.RtDvh.draw(container, dvh, options).

   Plain DOM and SVG, no library: the page's CSP allows scripts from 'self' only, no inline style
   and images from 'self' or data: only. Every DICOM-derived string (structure names, reasons)
   goes through textContent or an attribute, never markup. The SVG is styled by presentation
   attributes only, so the PNG (the SVG drawn through an <img>, where the page's style sheet does
   not apply) looks the same as the page. */
(function () {
  "use strict";
  const SVG_NS = "http://www.w3.org/2000/svg";
  // Distinct on white, darkened so that a 2 px line is still readable; repeats after ten.
  const PALETTE = ["#0b62a4", "#d1495b", "#2a9d5c", "#7b3fa0", "#e07b00",
    "#00838f", "#8d5524", "#c2185b", "#546e7a", "#6b8e23"];
  const INK = "#1d2733", MUTED = "#5b6470", GRID = "#e3e7eb", FONT = "system-ui, 'Segoe UI', sans-serif";
  const PLANNING_DASH = "7 4", RX_DASH = "3 3";
  const HINT = "Point at the chart, or focus it and use the arrow keys, to read the volumes at a dose.";
  let instances = 0;

  function svg(parent, name, attrs, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    if (parent) parent.append(node);
    return node;
  }

  function html(parent, tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    if (parent) parent.append(node);
    return node;
  }

  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  const short = (v) => String(Number(v.toFixed(2)));             // 60 -> "60", 61.8 -> "61.8"
  const percent = (v) => (v === null ? "no data" : v === 0 ? "0 %" : v < 0.1 ? "< 0.1 %" : `${v.toFixed(1)} %`);

  // 1, 2 or 5 x 10^n, the nearest to cutting `span` into `count` parts (rounding up instead
  // left a fifth of a narrow chart empty: 0 to 80 Gy for a 65 Gy plan).
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / magnitude;
    return (norm < 1.5 ? 1 : norm < 3.5 ? 2 : norm < 7.5 ? 5 : 10) * magnitude;
  }
  const decimals = (step) => Math.max(0, -Math.floor(Math.log10(step) + 1e-9));

  // A curve as finite (dose, volume) pairs sorted by dose, or null. Nothing is added here: the
  // drop to zero is drawn, never stored, so the CSV and the readout hold only the data.
  function curveOf(source) {
    if (!source || !Array.isArray(source.dose_gy) || !Array.isArray(source.volume_pct)) return null;
    const points = [];
    for (let i = 0; i < Math.min(source.dose_gy.length, source.volume_pct.length); i++) {
      const dose = source.dose_gy[i], volume = source.volume_pct[i];
      if (isNumber(dose) && isNumber(volume)) points.push([dose, volume]);
    }
    points.sort((a, b) => a[0] - b[0]);
    return points.length ? points : null;
  }

  // An RTSTRUCT display colour if the row carries one ([r, g, b] or "r\g\b"), unless too pale
  // to read on white; otherwise the palette decides.
  function displayColour(row) {
    let rgb = row && (row.display_color || row.color || row.colour);
    if (typeof rgb === "string") rgb = rgb.split("\\").map(Number);
    if (!Array.isArray(rgb) || rgb.length !== 3 || !rgb.every((c) => isNumber(c) && c >= 0 && c <= 255)) return null;
    const [r, g, b] = rgb.map(Math.round);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 200 ? null : `rgb(${r},${g},${b})`;
  }

  // One entry per structure name: its computed curve and/or the planning system's. The planning
  // system's DVHs are a mapping roi -> curve (dvh_source.planning_system_dvhs); a list is read too.
  function structuresOf(dvh) {
    const byName = new Map();
    const entry = (name) => {
      const key = name === undefined || name === null ? "" : String(name);
      if (!byName.has(key)) byName.set(key, { name: key, computed: null, planning: null, colour: null, visible: true });
      return byName.get(key);
    };
    for (const row of Array.isArray(dvh.computed) ? dvh.computed : []) {
      const points = curveOf(row);
      if (points) Object.assign(entry(row.roi), { computed: points }).colour ||= displayColour(row);
    }
    const planning = dvh.planning_system;
    const items = Array.isArray(planning) ? planning.map((p) => [p && (p.roi ?? p.name), p])
      : planning && typeof planning === "object" ? Object.entries(planning) : [];
    for (const [name, item] of items) {
      const points = curveOf(item);
      if (points) Object.assign(entry(name), { planning: points }).colour ||= displayColour(item);
    }
    return [...byName.values()].map((s, i) => Object.assign(s, { colour: s.colour || PALETTE[i % PALETTE.length] }));
  }

  function emptyReason(dvh) {
    const sentence = (text) => (/[.!?]$/.test(text) ? text : text + ".");
    const uidless = (text) => String(text).replace(/\b\d+(\.\d+){3,}\b/g, "(referenced, not received)");
    if (dvh.error) return sentence("No DVH: " + String(dvh.error).replace(/^no DVH:\s*/i, ""));
    const missing = Array.isArray(dvh.missing) ? dvh.missing.map(uidless) : [];
    if (dvh.complete === false && missing.length) return `No DVH yet: the plan is incomplete (missing ${missing.join("; ")}).`;
    const skipped = Array.isArray(dvh.not_computed) ? dvh.not_computed.filter(Boolean) : [];
    if (skipped.length) return sentence("No DVH could be computed: " + skipped.map((s) => `${s.roi}: ${s.reason}`).join("; "));
    const planning = dvh.planning_system && typeof dvh.planning_system === "object" ? Object.keys(dvh.planning_system) : [];
    if ((Array.isArray(dvh.computed) && dvh.computed.length) || planning.length) return "No DVH curve to draw: the structures came without dose-volume points.";
    if (Array.isArray(dvh.computed)) return "No DVH: no structure of the structure set has a contour to sample.";
    return "No DVH: this plan has no RTSTRUCT or RTDOSE (or no RT Plan) stored yet.";
  }

  // % of the volume receiving at least `dose`, linear between points; null before the curve's
  // first dose (no data), 0 past its last (the curve has dropped to zero there).
  function volumeAt(points, dose) {
    if (dose < points[0][0]) return null;
    if (dose > points[points.length - 1][0]) return 0;
    let low = 0, high = points.length - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (points[middle][0] < dose) low = middle + 1; else high = middle;
    }
    const [d1, v1] = points[low];
    if (d1 === dose || low === 0) return v1;
    const [d0, v0] = points[low - 1];
    return v0 + (v1 - v0) * (dose - d0) / (d1 - d0);
  }

  // A spreadsheet must never read a cell as a formula: = + - @ tab CR at the start get a quote.
  function csvCell(value) {
    let text = String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  // A legend line as a <span>, not an <svg>: the chart's container then holds one <svg> only
  // (the page's tests look it up as such). Coloured through the CSSOM, which the CSP allows.
  function swatch(parent, colour, dashed) {
    const line = html(parent, "span", { class: dashed ? "dvh-swatch dvh-swatch-dashed" : "dvh-swatch", "aria-hidden": "true" });
    line.style.borderTopColor = colour;
    return line;
  }

  function download(parent, href, name) {
    const link = html(parent, "a", { href, download: name, class: "dvh-download" });
    link.click();
    link.remove();
  }

  function draw(container, dvh, options) {
    dvh = dvh && typeof dvh === "object" ? dvh : {};
    options = options || {};
    const id = ++instances;
    const root = html(null, "div", { class: "dvh-root" });
    container.replaceChildren(root);
    const structures = structuresOf(dvh);
    if (!structures.length) {
      html(root, "p", { class: "dvh-empty" }, emptyReason(dvh));
      return { destroy() { root.remove(); } };
    }
    const rx = isNumber(dvh.prescription_gy) && dvh.prescription_gy > 0 ? dvh.prescription_gy : null;
    const relative = String(dvh.dose_units || "").toUpperCase() === "RELATIVE";
    const unit = relative ? "" : " Gy";
    const curves = (s) => [s.computed, s.planning].filter(Boolean);
    const topDose = Math.max(...structures.flatMap(curves).map((c) => c[c.length - 1][0]));
    const bothSources = structures.some((s) => s.computed) && structures.some((s) => s.planning);
    const base = String(options.filenameBase || "dvh").replace(/[^A-Za-z0-9_-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 100) || "dvh";

    const chart = svg(root, "svg", { class: "dvh-svg", role: "img", tabindex: 0, "font-family": FONT, "font-size": 12 });
    const readout = html(root, "p", { class: "dvh-readout", "aria-live": "polite" }, HINT);
    const legend = html(root, "div", { class: "dvh-legend", role: "group", "aria-label": "Structures: press to show or hide" });
    if (bothSources) {
      const key = html(root, "p", { class: "dvh-key" });
      for (const [dash, words] of [["none", "computed by the gateway"], [PLANNING_DASH, "planning system (from the RTDOSE)"]]) {
        const item = html(key, "span", { class: "dvh-key-item" });
        swatch(item, INK, dash !== "none");
        html(item, "span", {}, words);
      }
    }
    const tools = html(root, "div", { class: "dvh-tools" });
    const pngButton = html(tools, "button", { type: "button", class: "dvh-export", "aria-label": "Download the chart as a PNG image" }, "PNG");
    const csvButton = html(tools, "button", { type: "button", class: "dvh-export", "aria-label": "Download the curves of all structures as CSV" }, "CSV");
    const status = html(tools, "span", { class: "dvh-status", role: "status" });

    // Geometry of the current rendering (the SVG is drawn again when the container's width changes,
    // so text keeps its size instead of shrinking with a scaled viewBox).
    let width = 0, height = 0, doseEnd = 1, doseStep = 1, margin = null, cursor = null, cursorDose = null;
    const x = (dose) => margin.left + (dose / doseEnd) * (width - margin.left - margin.right);
    const y = (volume) => margin.top + (1 - volume / 100) * (height - margin.top - margin.bottom);

    function label() {
      const shown = structures.filter((s) => s.visible).length;
      chart.setAttribute("aria-label", `DVH of ${structures.length} structure${structures.length === 1 ? "" : "s"}` +
        (shown < structures.length ? ` (${shown} shown)` : "") + `, dose 0 to ${short(topDose)}${unit || " (relative)"}` +
        (rx ? `, prescription ${short(rx)} Gy` : "") + (bothSources ? ", computed and planning-system curves" : ""));
    }

    function render() {
      width = Math.max(320, Math.round(container.clientWidth || 600));
      height = Math.round(Math.min(420, Math.max(260, width * 0.6)));
      margin = { left: 54, right: 22, top: rx ? 44 : 14, bottom: 46 };
      const plotWidth = width - margin.left - margin.right, plotHeight = height - margin.top - margin.bottom;
      // A little headroom past the highest dose (and the prescription), so the last drop shows.
      const reach = Math.max(topDose * 1.02, rx ? rx * 1.08 : 0, 1e-3);
      doseStep = niceStep(reach, Math.max(3, Math.floor(plotWidth / 70)));
      doseEnd = Math.ceil(reach / doseStep - 1e-9) * doseStep;
      chart.replaceChildren();
      for (const [key, value] of Object.entries({ viewBox: `0 0 ${width} ${height}`, width, height })) chart.setAttribute(key, value);
      svg(chart, "rect", { x: 0, y: 0, width, height, fill: "#ffffff" });
      const clip = svg(svg(chart, "defs"), "clipPath", { id: `dvh-clip-${id}` });
      svg(clip, "rect", { x: margin.left, y: margin.top - 2, width: plotWidth + 2, height: plotHeight + 2 });
      const axes = svg(chart, "g", { fill: MUTED });

      const digits = decimals(doseStep);
      for (let k = 0; k * doseStep <= doseEnd + 1e-9; k++) {
        const px = x(k * doseStep);
        svg(axes, "line", { x1: px, x2: px, y1: margin.top, y2: height - margin.bottom, stroke: GRID });
        svg(axes, "line", { x1: px, x2: px, y1: height - margin.bottom, y2: height - margin.bottom + 4, stroke: MUTED });
        svg(axes, "text", { x: px, y: height - margin.bottom + 17, "text-anchor": "middle" }, (k * doseStep).toFixed(digits));
      }
      const volumeStep = niceStep(100, Math.max(2, Math.floor(plotHeight / 40)));
      for (let v = 0; v <= 100 + 1e-9; v += volumeStep) {
        svg(axes, "line", { x1: margin.left, x2: width - margin.right, y1: y(v), y2: y(v), stroke: GRID });
        svg(axes, "line", { x1: margin.left - 4, x2: margin.left, y1: y(v), y2: y(v), stroke: MUTED });
        svg(axes, "text", { x: margin.left - 7, y: y(v) + 4, "text-anchor": "end" }, short(v));
      }
      svg(axes, "rect", { x: margin.left, y: margin.top, width: plotWidth, height: plotHeight, fill: "none", stroke: MUTED });
      svg(axes, "text", { x: margin.left + plotWidth / 2, y: height - 8, "text-anchor": "middle", fill: INK }, relative ? "Dose (relative)" : "Dose (Gy)");
      svg(axes, "text", { x: 14, y: margin.top + plotHeight / 2, "text-anchor": "middle", fill: INK,
        transform: `rotate(-90 14 ${margin.top + plotHeight / 2})` }, "Volume (%)");

      if (rx) {
        // The top axis in % of the prescription: its 100 tick sits under the "Rx" label.
        const top = svg(chart, "g", { fill: MUTED });
        const pctStep = niceStep(doseEnd / rx * 100, Math.max(3, Math.floor(plotWidth / 70)));
        for (let p = 0; p * rx / 100 <= doseEnd + 1e-9; p += pctStep) {
          const px = x(p * rx / 100);
          svg(top, "line", { x1: px, x2: px, y1: margin.top - 4, y2: margin.top, stroke: MUTED });
          svg(top, "text", { x: px, y: margin.top - 8, "text-anchor": "middle" }, short(p));
        }
        const rxX = x(rx), titleWidth = 120;
        const title = rxX - margin.left > titleWidth + 40 ? { x: margin.left, anchor: "start" }
          : width - margin.right - rxX > titleWidth + 40 ? { x: width - margin.right, anchor: "end" } : null;
        if (title) svg(top, "text", { x: title.x, y: 14, "text-anchor": title.anchor }, "% of prescription");
        svg(chart, "line", { x1: rxX, x2: rxX, y1: margin.top, y2: height - margin.bottom, stroke: INK, "stroke-width": 1.2, "stroke-dasharray": RX_DASH });
        svg(chart, "text", { x: Math.min(Math.max(rxX, margin.left + 30), width - 30), y: 14, "text-anchor": "middle",
          fill: INK, "font-weight": 600 }, `Rx ${short(rx)} Gy`);
      }

      // Curves: each closed by a drop to zero volume at its last dose (a cumulative DVH is zero
      // past the highest dose; the data stop at that dose with the volume that receives it).
      const path = (points) => {
        let d = points.map(([dose, volume], i) => `${i ? "L" : "M"}${x(dose).toFixed(1)},${y(volume).toFixed(1)}`).join("");
        const [lastDose, lastVolume] = points[points.length - 1];
        if (lastVolume > 0) d += `L${x(lastDose).toFixed(1)},${y(0).toFixed(1)}`;
        return d;
      };
      const plot = svg(chart, "g", { "clip-path": `url(#dvh-clip-${id})`, fill: "none", "stroke-linejoin": "round" });
      for (const s of structures) {
        s.group = svg(plot, "g", { display: s.visible ? "inline" : "none", stroke: s.colour });
        if (s.planning) svg(s.group, "path", { d: path(s.planning), "stroke-width": 1.7, "stroke-dasharray": PLANNING_DASH });
        if (s.computed) svg(s.group, "path", { d: path(s.computed), "stroke-width": 2.2 });
      }
      cursor = svg(chart, "g", { class: "dvh-cursor", display: "none", "pointer-events": "none" });
      label();
      if (cursorDose !== null && cursorShown) readAt(cursorDose);
    }

    let cursorShown = false;
    function hideCursor() { cursorShown = false; cursor.setAttribute("display", "none"); }

    function readAt(dose) {
      cursorDose = Math.min(Math.max(dose, 0), doseEnd);
      cursorShown = true;
      const px = x(cursorDose);
      cursor.replaceChildren();
      cursor.setAttribute("display", "inline");
      svg(cursor, "line", { x1: px, x2: px, y1: margin.top, y2: height - margin.bottom, stroke: INK, "stroke-width": 1 });
      const parts = [];
      for (const s of structures.filter((t) => t.visible)) {
        const ours = s.computed && volumeAt(s.computed, cursorDose), theirs = s.planning && volumeAt(s.planning, cursorDose);
        for (const [v, r] of [[theirs, 3], [ours, 3.5]]) {
          if (isNumber(v)) svg(cursor, "circle", { cx: px, cy: y(Math.min(v, 100)), r, fill: s.colour, stroke: "#ffffff", "stroke-width": 1.5 });
        }
        const name = s.name || "(unnamed)";
        parts.push(s.computed ? `${name} ${percent(ours)}` + (s.planning ? ` (planning system ${percent(theirs)})` : "")
          : `${name} (planning system) ${percent(theirs)}`);
      }
      const where = `At ${cursorDose.toFixed(1)}${unit || " (relative)"}` + (rx ? ` (${(cursorDose / rx * 100).toFixed(1)} % of Rx)` : "");
      const text = `${where}: ${parts.length ? parts.join(", ") : "no structure shown"}.`;
      if (readout.textContent !== text) readout.textContent = text;   // a live region: only real changes
    }

    const doseAtPointer = (event) => {
      const box = chart.getBoundingClientRect();
      const px = (event.clientX - box.left) * (width / box.width);
      return px < margin.left || px > width - margin.right ? null : ((px - margin.left) / (width - margin.left - margin.right)) * doseEnd;
    };
    chart.addEventListener("pointermove", (event) => {
      const dose = doseAtPointer(event);
      if (dose === null) hideCursor(); else readAt(dose);
    });
    chart.addEventListener("pointerleave", hideCursor);
    chart.addEventListener("focus", () => readAt(cursorDose ?? rx ?? 0));
    chart.addEventListener("blur", hideCursor);
    chart.addEventListener("keydown", (event) => {
      // Arrows by a tenth of a tick (1 Gy on a 10 Gy grid); Page keys by a tick; Home/End.
      const small = doseStep / 10, from = cursorDose ?? rx ?? 0;
      const moves = { ArrowRight: from + small, ArrowUp: from + small, ArrowLeft: from - small, ArrowDown: from - small,
        PageUp: from + doseStep, PageDown: from - doseStep, Home: 0, End: topDose };
      if (!(event.key in moves)) return;
      event.preventDefault();
      readAt(Math.round(moves[event.key] / small) * small);
    });

    for (const s of structures) {
      const name = s.name || "(unnamed)";
      const button = html(legend, "button", { type: "button", class: "dvh-toggle", "aria-pressed": "true" });
      swatch(button, s.colour, !s.computed);
      html(button, "span", {}, name);
      button.addEventListener("click", () => {
        s.visible = !s.visible;
        button.setAttribute("aria-pressed", String(s.visible));
        s.group.setAttribute("display", s.visible ? "inline" : "none");
        label();
        if (cursorShown) readAt(cursorDose);
      });
    }

    csvButton.addEventListener("click", () => {
      const rows = [["structure", "source", "dose_gy", "volume_pct"]];
      for (const s of structures) {
        for (const [source, points] of [["computed", s.computed], ["planning system", s.planning]]) {
          for (const [dose, volume] of points || []) rows.push([s.name, source, dose, volume]);
        }
      }
      const text = rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
      download(root, "data:text/csv;charset=utf-8," + encodeURIComponent(text), base + ".csv");
    });

    // PNG: the SVG (without the cursor) through an <img> from a data: URL (the CSP refuses blob:
    // images), onto a canvas at twice the size, with the title above and the legend below.
    pngButton.addEventListener("click", () => {
      const copy = chart.cloneNode(true);
      const stray = copy.querySelector(".dvh-cursor");
      if (stray) stray.remove();
      const image = new Image();
      image.onerror = () => { status.textContent = "The PNG could not be made in this browser."; };
      image.onload = () => {
        try {
          const canvas = document.createElement("canvas"), scale = 2;
          let context = canvas.getContext("2d");
          context.font = `12px ${FONT}`;
          const entries = structures.filter((s) => s.visible).map((s) => ({ s, text: s.name || "(unnamed)" }));
          if (bothSources) entries.push({ key: "none", text: "computed", row: true }, { key: PLANNING_DASH, text: "planning system" });
          let ex = 10, ey = 0;
          for (const entry of entries) {
            const w = 29 + context.measureText(entry.text).width + 18;
            if ((entry.row || ex + w > width - 10) && ex > 10) { ex = 10; ey += 20; }
            Object.assign(entry, { ex, ey });
            ex += w;
          }
          const titleHeight = options.title ? 28 : 0, legendHeight = entries.length ? ey + 30 : 0;
          canvas.width = width * scale;
          canvas.height = (titleHeight + height + legendHeight) * scale;
          context = canvas.getContext("2d");
          context.scale(scale, scale);
          context.fillStyle = "#ffffff";
          context.fillRect(0, 0, width, titleHeight + height + legendHeight);
          context.fillStyle = INK;
          if (options.title) {
            context.font = `600 14px ${FONT}`;
            context.fillText(String(options.title), 10, 19);
          }
          context.drawImage(image, 0, titleHeight, width, height);
          context.font = `12px ${FONT}`;
          for (const entry of entries) {
            const top = titleHeight + height + 12 + entry.ey;
            context.strokeStyle = entry.s ? entry.s.colour : INK;
            context.lineWidth = 3;
            context.setLineDash(entry.s ? (entry.s.computed ? [] : [7, 4]) : entry.key === "none" ? [] : [7, 4]);
            context.beginPath();
            context.moveTo(entry.ex, top + 5);
            context.lineTo(entry.ex + 24, top + 5);
            context.stroke();
            context.fillText(entry.text, entry.ex + 29, top + 9);
          }
          download(root, canvas.toDataURL("image/png"), base + ".png");
          status.textContent = "";
        } catch (error) {
          status.textContent = "The PNG could not be made: " + error.message;
        }
      };
      image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(new XMLSerializer().serializeToString(copy));
    });

    render();
    // Drawn again for a new width; after a frame, so that no ResizeObserver loop is reported.
    let frame = 0;
    const observer = typeof ResizeObserver === "function" ? new ResizeObserver(() => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => {
        const now = Math.round(container.clientWidth);
        if (now > 0 && Math.abs(Math.max(320, now) - width) >= 2) render();
      });
    }) : null;
    if (observer) observer.observe(container);
    return {
      destroy() {
        if (observer) observer.disconnect();
        cancelAnimationFrame(frame);
        root.remove();
      },
    };
  }

  window.RtDvh = Object.freeze({ draw });
})();
