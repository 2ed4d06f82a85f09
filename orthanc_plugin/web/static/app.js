// The gateway page: plain JavaScript, no build step; every request goes to this Orthanc origin.
"use strict";

const BASE = location.pathname.slice(0, location.pathname.indexOf("/rt-gateway/"));
const API = BASE + "/rt-gateway/";
const $ = (selector) => document.querySelector(selector);

async function call(path, options = {}) {
  const response = await fetch(path.startsWith("/") ? BASE + path : API + path, {
    credentials: "same-origin",
    // The gateway refuses a state-changing request without this header (a cross-site form cannot send it).
    headers: { "X-Requested-With": "rt-gateway-page", ...(options.body ? { "Content-Type": "application/json" } : {}) },
    ...options,
  });
  const text = await response.text();
  let body = text;
  try { body = text ? JSON.parse(text) : null; } catch (_) { /* CSV or text */ }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${text}`;
    throw new Error(message);
  }
  return body;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP, an attribute is not
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function table(target, rows, columns) {
  target.replaceChildren();
  if (!rows || rows.length === 0) { target.append(element("tr", {}, element("td", {}, "nothing"))); return; }
  columns = columns || Object.keys(rows[0]);
  target.append(element("tr", {}, ...columns.map((c) => element("th", {}, c))));
  for (const row of rows) {
    target.append(element("tr", {}, ...columns.map((c) => {
      const value = row[c];
      return element("td", {}, value instanceof Node ? value : (value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : value));
    })));
  }
}

function showMessage(node, text, ok) {
  node.textContent = text;
  node.className = "message " + (ok ? "ok" : "error");
}

// -- tabs --------------------------------------------------------------------------------------
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.id === "tab-" + name);
  ({ plans: loadPlans, rules: loadRules, activity: loadActivity })[name]();
}

// -- plans -------------------------------------------------------------------------------------
const planField = (plan, ...names) => { for (const n of names) if (plan[n] !== undefined && plan[n] !== null) return plan[n]; return ""; };
const planId = (plan) => String(planField(plan, "id", "plan_id"));
const isComplete = (plan) => Boolean(planField(plan, "complete", "is_complete")) || planField(plan, "completeness", "state") === "complete";

// Opened from Orthanc Explorer 2's study view (a custom button, see the README) with
// ?patient=<PatientID>&study=<StudyInstanceUID>: only that patient's plans, that study's first.
const FOCUS = new URLSearchParams(location.search);

async function loadPlans() {
  const tree = $("#plans-tree");
  let plans;
  try {
    const filter = new URLSearchParams();
    if (FOCUS.get("patient")) filter.set("patient", FOCUS.get("patient"));
    if (FOCUS.get("study")) filter.set("study", FOCUS.get("study"));
    plans = await call("plans" + (filter.toString() ? "?" + filter : ""));
  } catch (error) {
    tree.textContent = "Plans are not available: " + error.message;
    plans = [];
  }
  if (plans && !Array.isArray(plans)) plans = plans.plans || [];
  const byPatient = new Map();
  for (const plan of plans) {
    const key = planField(plan, "patient_id", "patient", "PatientID");
    if (!byPatient.has(key)) byPatient.set(key, []);
    byPatient.get(key).push(plan);
  }
  const list = element("ul");
  for (const [patient, patientPlans] of byPatient) {
    const planList = element("ul");
    for (const plan of patientPlans) {
      const id = planId(plan);
      const objects = element("ul");
      const grouped = {};
      for (const object of planField(plan, "objects", "instances") || []) {
        const modality = typeof object === "string" ? object : planField(object, "modality", "Modality");
        grouped[modality] = (grouped[modality] || 0) + 1;
      }
      for (const modality of ["CT", "MR", "PT", "RTSTRUCT", "RTPLAN", "RTDOSE"]) {
        if (grouped[modality]) objects.append(element("li", {}, `${modality} × ${grouped[modality]}`));
      }
      const missing = planField(plan, "missing");
      planList.append(element("li", { class: "plan", "data-plan": id },
        element("label", {}, element("input", { type: "checkbox", class: "plan-check", value: id, onchange: updateSendButton }),
          " ", element("a", { class: "plan-link", onclick: () => showPlan(id) }, planField(plan, "label", "plan_label") || "(no label)")),
        " ", planField(plan, "name", "plan_name"), " ", planField(plan, "date", "plan_date"),
        " from ", planField(plan, "calling_aet", "source_aet") || "?",
        element("span", { class: "badge " + (isComplete(plan) ? "complete" : "incomplete") }, isComplete(plan) ? "complete" : "incomplete"),
        missing && missing.length ? element("span", { class: "muted" }, " missing: " + JSON.stringify(missing)) : null,
        objects));
    }
    list.append(element("li", { class: "patient" }, "Patient " + patient, planList));
  }
  const focus = FOCUS.get("study") || FOCUS.get("patient");
  const none = focus ? `No plans for ${FOCUS.get("study") ? "study" : "patient"} ${focus}.` : "No plans received yet.";
  tree.replaceChildren(plans.length ? list : element("p", { class: "muted" }, none));
  await loadTargets();
}

async function loadTargets() {
  const box = $("#targets");
  let targets = [];
  try { targets = await call("/modalities"); } catch (error) { box.textContent = error.message; return; }
  box.replaceChildren(...targets.map((name) => element("div", {},
    element("label", {}, element("input", { type: "checkbox", class: "target-check", value: name, onchange: updateSendButton }), " ", name))));
  updateSendButton();
}

function checked(selector) { return [...document.querySelectorAll(selector)].filter((c) => c.checked).map((c) => c.value); }
function updateSendButton() { $("#send").disabled = !(checked(".plan-check").length && checked(".target-check").length); }

$("#send").addEventListener("click", async () => {
  const message = $("#send-message");
  try {
    const answer = await call("plans/send", { method: "POST", body: JSON.stringify({ plans: checked(".plan-check"), targets: checked(".target-check") }) });
    const jobs = Array.isArray(answer) ? answer : (answer.jobs || answer.job_ids || []);
    showMessage(message, `${jobs.length} job(s) queued`, true);
    for (const job of jobs) trackJob(typeof job === "object" ? (job.id || job.job_id) : job);
  } catch (error) {
    showMessage(message, error.message, false);
  }
});

function trackJob(jobId) {
  const bar = element("progress", { max: "1", value: "0" });
  const state = element("span", { class: "badge pending" }, "pending");
  const error = element("div", { class: "message error" });
  const retry = element("button", { hidden: "", onclick: async () => { await call(`jobs/${jobId}/retry`, { method: "POST" }); retry.hidden = true; poll(); } }, "Retry");
  $("#send-jobs").prepend(element("div", { class: "job", "data-job": jobId }, `Job ${jobId} `, bar, state, retry, error));
  async function poll() {
    const job = await call(`jobs/${jobId}`);
    bar.max = job.instances || 1;
    bar.value = job.sent || 0;
    state.textContent = job.state;
    state.className = "badge " + job.state;
    error.textContent = job.state === "done" ? "" : (job.last_error || "");
    retry.hidden = job.state !== "dead";
    if (job.state !== "done" && job.state !== "dead") setTimeout(poll, 500);
  }
  poll();
}

async function showPlan(id) {
  const detail = $("#plan-detail");
  detail.hidden = false;
  const plan = await call(`plans/${encodeURIComponent(id)}`);
  $("#plan-title").textContent = `Plan ${planField(plan, "label", "plan_label")} (${planField(plan, "patient_id")})`;
  const metrics = plan.metrics || plan;
  const scalars = Object.entries(metrics).filter(([, v]) => v === null || typeof v !== "object");
  table($("#plan-metrics"), scalars.map(([k, v]) => ({ metric: k, value: v })));
  table($("#plan-beams"), metrics.beams || plan.beams || []);
  $("#plan-rois").replaceChildren(...(plan.rois || plan.roi_names || metrics.rois || []).map((r) => element("li", {}, typeof r === "string" ? r : [planField(r, "ROIName", "name", "roi_name"), planField(r, "ROIType", "type")].join(" ").trim())));
  table($("#plan-dose"), [].concat(plan.dose || plan.doses || metrics.dose || []));
  drawDvh(plan.dvh || []);
  showDvhComparison(plan.dvh || {});
}

// Per structure the planning system also reported: computed / planning system / difference.
function showDvhComparison(dvh) {
  // The conventions travel with the numbers: a small structure's volume depends on them (README).
  const notes = dvh.method ? [`Computed: ${dvh.method}.`] : [];
  if (dvh.complete === false) notes.push("Images missing: " + (dvh.missing || []).join("; ") + ".");
  if (dvh.dose_conversion) notes.push(dvh.dose_conversion + ".");
  if (dvh.error) notes.push(dvh.error);
  for (const skipped of dvh.not_computed || []) notes.push(`No DVH for ${skipped.roi}: ${skipped.reason}.`);
  for (const small of dvh.computed || []) {
    if (small.volume_cc_slabs === undefined) continue;
    notes.push(`${small.roi}: ${Number(small.volume_cc).toFixed(3)} cc, ${Number(small.volume_cc_slabs).toFixed(3)} cc counted as slabs (a small structure's volume depends on the convention).`);
  }
  const round = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(2));
  const rows = (dvh.comparison || []).map((row) => {
    const out = { structure: row.roi };
    for (const key of ["volume_cc", "Dmin", "Dmean", "Dmax"]) {
      const cell = row[key] || {};
      out[key] = `${round(cell.computed)} / ${round(cell.planning_system)} (${cell.difference > 0 ? "+" : ""}${round(cell.difference)})`;
    }
    for (const check of row.checks || []) notes.push(`${row.roi}: ${check}.`);
    return out;
  });
  $("#dvh-notes").textContent = notes.join(" ");
  table($("#dvh-compare"), rows, ["structure", "volume_cc", "Dmin", "Dmean", "Dmax"]);
}

function dvhCurves(dvh) {
  // Accepts {computed: [...], tps: [...]} or a list of curves with a `source`.
  const curves = [];
  const add = (list, source) => { for (const c of list || []) curves.push({ ...c, source: c.source || source }); };
  const asList = (value) => Array.isArray(value) ? value : Object.entries(value || {}).map(([roi, c]) => ({ roi, ...c }));
  if (Array.isArray(dvh)) add(dvh, "computed"); else { add(asList(dvh.computed), "computed"); add(asList(dvh.tps || dvh.planning_system), "planning system"); }
  return curves.map((c) => ({
    name: planField(c, "roi", "name", "structure", "roi_name"),
    source: c.source,
    dose: c.dose_gy || c.doses || c.dose || [],
    volume: c.volume_pct || c.volumes || c.volume || [],
  })).filter((c) => c.dose.length && c.dose.length === c.volume.length);
}

function drawDvh(dvh) {
  const svg = $("#dvh");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const curves = dvhCurves(dvh);
  const width = 560, height = 360, left = 50, bottom = 30;
  const maxDose = Math.max(1, ...curves.flatMap((c) => c.dose));
  const maxVolume = Math.max(100, ...curves.flatMap((c) => c.volume));
  const x = (d) => left + (d / maxDose) * (width - left - 10);
  const y = (v) => height - bottom - (v / maxVolume) * (height - bottom - 10);
  const line = (x1, y1, x2, y2) => { const l = document.createElementNS(ns, "line"); Object.entries({ x1, y1, x2, y2, stroke: "#888" }).forEach(([k, v]) => l.setAttribute(k, v)); svg.append(l); };
  const text = (tx, ty, content) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("font-size", "11"); t.textContent = content; svg.append(t); };
  line(left, height - bottom, width - 10, height - bottom);
  line(left, 10, left, height - bottom);
  text(width / 2, height - 5, "dose (Gy)");
  text(2, 20, "volume (%)");
  text(left - 5, height - bottom + 14, "0");
  text(width - 40, height - bottom + 14, maxDose.toFixed(1));
  const colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
  const legend = $("#dvh-legend");
  legend.replaceChildren();
  const names = [...new Set(curves.map((c) => c.name))];
  curves.forEach((curve) => {
    const colour = colours[names.indexOf(curve.name) % colours.length];
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", curve.dose.map((d, i) => `${x(d).toFixed(1)},${y(curve.volume[i]).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", colour);
    path.setAttribute("class", "dvh-curve");
    if (curve.source !== "computed") path.setAttribute("stroke-dasharray", "5,3");
    svg.append(path);
    legend.append(element("span", { style: `color:${colour}; margin-right:1em` }, `${curve.name} (${curve.source})`));
  });
  if (!curves.length) text(left + 20, height / 2, "no DVH for this plan");
}

// -- rules -------------------------------------------------------------------------------------
async function loadRules() {
  const rules = await call("rules");
  $("#rules-file").textContent = `${rules.file} — sha256 ${rules.sha256}`;
  $("#rules-yaml").textContent = rules.text || JSON.stringify(rules.rules, null, 2);
}

$("#reload-rules").addEventListener("click", async () => {
  const message = $("#rules-message");
  try {
    const answer = await call("rules/reload", { method: "POST" });
    showMessage(message, `Reloaded: ${answer.loaded} rule(s)`, true);
    loadRules();
  } catch (error) {
    showMessage(message, "Not reloaded, the previous rules stay in force: " + error.message, false);
  }
});

$("#test-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("#test-result");
  try {
    const answer = await call("rules/test", { method: "POST", body: JSON.stringify({ study: $("#test-study").value.trim() }) });
    table(result, answer.rules.map((r) => ({
      rule: r.rule, on: r.on, "would fire": r.would_fire ? "yes" : "no",
      "failed condition": r.failed_condition || "", why: r.reason, instances: r.instances, targets: r.targets.join(", "),
      conditions: element("ul", { class: "conditions" }, ...(r.conditions || []).map((c) =>
        element("li", { class: c.holds ? "holds" : "fails" }, `${c.holds ? "✔" : "✘"} ${c.condition}: ${c.reason}`))),
    })));
  } catch (error) {
    result.replaceChildren(element("tr", {}, element("td", { class: "message error" }, error.message)));
  }
});

// -- activity ----------------------------------------------------------------------------------
function auditQuery() {
  const params = new URLSearchParams({ kind: $("#audit-kind").value, limit: "500" });
  const since = $("#audit-since").value, until = $("#audit-until").value;
  if (since) params.set("since", new Date(since).toISOString());
  if (until) params.set("until", new Date(until).toISOString());
  for (const name of ["rule", "target", "status"]) {
    const value = $(`#audit-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// Storage commitment per target: only targets configured for it have the numbers.
function commitmentText(commitment) {
  if (!commitment) return "";
  const parts = [`${commitment.committed}`];
  if (commitment.waiting) parts.push(`${commitment.waiting} waiting`);
  if (commitment.not_committed) parts.push(`${commitment.not_committed} NOT committed`);
  return parts.join(", ");
}

async function loadActivity() {
  const stats = await call("stats");
  const rows = [];
  for (const [group, entries] of Object.entries(stats)) {
    for (const [name, s] of Object.entries(entries)) {
      const attempts = s.successful_transfers + s.failed;
      rows.push({ by: group.replace("by_", ""), name, sent: s.sent, committed: commitmentText(s.commitment), "success rate": attempts ? `${Math.round((100 * s.successful_transfers) / attempts)} %` : "", failed: s.failed, pending: s.pending, parked: s.parked, "last error": s.last_error || "" });
    }
  }
  table($("#stats"), rows);
  const dead = await call("jobs?state=dead");
  table($("#dead-jobs"), dead.map((job) => ({
    job: job.id, rule: job.rule, target: job.target, study: job.study_uid, error: job.last_error,
    retry: element("button", { onclick: async () => { await call(`jobs/${job.id}/retry`, { method: "POST" }); loadActivity(); } }, "Retry"),
  })));
  await loadAudit();
}

async function loadAudit() {
  const params = auditQuery();
  $("#audit-csv").href = API + "audit?" + params.toString() + "&format=csv";
  try {
    table($("#audit"), await call("audit?" + params.toString()));
    $("#audit-message").textContent = "";
  } catch (error) {
    showMessage($("#audit-message"), error.message, false);
  }
}
$("#audit-form").addEventListener("submit", (event) => { event.preventDefault(); loadAudit(); });

showTab(location.hash.slice(1) || "plans");
