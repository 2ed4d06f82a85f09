// The gateway page: plain JavaScript, no build step; every request goes to this Orthanc origin.
// Every DICOM value reaches the page as text (textContent), never as markup.
"use strict";

const BASE = location.pathname.slice(0, location.pathname.indexOf("/rt-gateway/"));
const API = BASE + "/rt-gateway/";
const $ = (selector) => document.querySelector(selector);

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path.startsWith("/") ? BASE + path : API + path, {
      credentials: "same-origin",
      // The gateway refuses a state-changing request without this header (a cross-site form cannot send it).
      headers: { "X-Requested-With": "rt-gateway-page", ...(options.body ? { "Content-Type": "application/json" } : {}) },
      ...options,
    });
  } catch (error) {
    throw new Error(`the gateway did not answer (${error.message})`);
  }
  const text = await response.text();
  let body = text;
  try { body = text ? JSON.parse(text) : null; } catch (_) { /* CSV or text */ }
  if (!response.ok) {
    const reason = body && body.error ? body.error : (body && body.problems ? body.problems.join("; ") : text.slice(0, 200));
    const error = new Error(`${response.status === 503 ? "unavailable" : "error " + response.status}: ${reason}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A table of rows with named columns: [{title, value(row) -> text or Node, class?}].
function dataTable(rows, columns, caption) {
  const table = element("table", { class: "data", "aria-label": caption || null });
  table.append(element("thead", {}, element("tr", {}, columns.map((c) => element("th", { scope: "col", class: c.class }, c.title)))));
  const body = element("tbody");
  for (const row of rows) {
    body.append(element("tr", {}, columns.map((c) => {
      const value = c.value(row);
      return element("td", { class: c.class }, value === null || value === undefined ? "" : value);
    })));
  }
  table.append(body);
  return table;
}

function showMessage(node, text, ok) {
  node.textContent = text;
  node.className = "message " + (ok ? "ok" : "error");
}

// -- words and times -----------------------------------------------------------------------------
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
$("#zone").textContent = `Times in ${ZONE}`;
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
const secondsFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}
function localTime(value) { const d = toDate(value); return d ? timeFormat.format(d) : ""; }
function shortTime(value) {
  const d = toDate(value);
  if (!d) return "";
  return d.toDateString() === new Date().toDateString() ? clockFormat.format(d) : timeFormat.format(d);
}
function secondsTime(value) {
  const d = toDate(value);
  if (!d) return "";
  return d.toDateString() === new Date().toDateString() ? secondsFormat.format(d) : timeFormat.format(d);
}
function age(value) {
  const d = toDate(value);
  if (!d) return "";
  const seconds = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
// DICOM dates (20261203) and person names (FAMILY^GIVEN) in words.
function dicomDate(text) {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(String(text || ""));
  return m ? dayFormat.format(new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]))) : String(text || "");
}
function personName(text) {
  const [family, given, middle] = String(text || "").split("=")[0].split("^");
  const rest = [given, middle].filter(Boolean).join(" ");
  return family ? (rest ? `${family}, ${rest}` : family) : "";
}
const gy = (value) => (value === null || value === undefined || !Number.isFinite(Number(value)) ? "" : `${Number(value).toFixed(2)} Gy`);
const number = (value, digits = 1) => (value === null || value === undefined || !Number.isFinite(Number(value)) ? "" : Number(value).toFixed(digits));
// A UID shortened, the whole one a click away (copied), never a column of them.
function shortUid(uid) {
  if (!uid) return "";
  const text = String(uid);
  return element("span", { class: "uid" }, element("span", { title: text }, text.length > 14 ? "…" + text.slice(-10) : text),
    element("button", { type: "button", class: "link", "aria-label": "Copy the UID " + text, onclick: (event) => copyText(text, event.currentTarget) }, "copy"));
}
// The clipboard API exists only on https or localhost: elsewhere the UID is put in a field,
// selected and copied the old way, and the button says what happened either way.
async function copyText(text, button) {
  let copied = false;
  try { if (navigator.clipboard) { await navigator.clipboard.writeText(text); copied = true; } } catch (_) { /* not allowed here */ }
  if (!copied) {
    const field = element("textarea", { readonly: true, class: "visually-hidden" }, text);
    document.body.append(field);
    field.select();
    try { copied = document.execCommand("copy"); } catch (_) { copied = false; }
    field.remove();
  }
  button.textContent = copied ? "copied" : "select and copy by hand";
  setTimeout(() => { button.textContent = "copy"; }, 2000);
}
const STATE_WORDS = { pending: "waiting", running: "sending", done: "done", dead: "parked", cancelled: "cancelled", held: "awaiting approval" };
const stateWord = (state) => STATE_WORDS[state] || state;
// Orthanc's and DCMTK's messages in words a therapist can act on; the raw text stays in a tooltip.
function humanError(text) {
  if (!text) return "";
  const raw = String(text);
  const aet = (/connecting to AET "([^"]*)"/.exec(raw) || [])[1];
  const who = aet ? `${aet} ` : "the destination ";
  let words = null;
  if (/Connection refused/i.test(raw)) words = `${who}refused the connection: is it running?`;
  else if (/timed? ?out|Timeout/i.test(raw)) words = `${who}did not answer in time`;
  else if (/network protocol|Association Rejected|association.*reject/i.test(raw)) words = `${who}did not accept the DICOM association (AE title, port or its settings)`;
  else if (/refused by .* with status/i.test(raw)) words = raw.replace(/ for instance [0-9a-f-]+/, "");
  return words ? element("span", { title: raw }, words) : raw;
}
function badge(text, kind) { return element("span", { class: "badge " + (kind || text) }, text); }

// -- the URL holds the view: #tab?param=value (deep links; Back works) ----------------------------
const FOCUS = new URLSearchParams(location.search); // Explorer 2's button: ?patient=&study=
function route() {
  const [tab, query] = location.hash.slice(1).split("?");
  return { tab: ["plans", "queue", "approvals", "activity", "rules", "health"].includes(tab) ? tab : "plans", params: new URLSearchParams(query || "") };
}
function navigate(tab, params, replace) {
  const query = params && params.toString();
  const hash = "#" + tab + (query ? "?" + query : "");
  if (location.hash === hash) { render(); return; }
  if (replace) { history.replaceState(null, "", hash); render(); } else location.hash = hash;
}
window.addEventListener("hashchange", () => render());

let refreshTimer = null;
function render() {
  const { tab, params } = route();
  for (const link of document.querySelectorAll("nav [role=tab]")) {
    const selected = link.dataset.tab === tab;
    link.setAttribute("aria-selected", String(selected));
    link.setAttribute("tabindex", selected ? "0" : "-1");
    link.classList.toggle("active", selected);
  }
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === "tab-" + tab);
  clearTimeout(refreshTimer);
  ({ plans: renderPlans, queue: renderQueue, approvals: renderApprovals, activity: renderActivity, rules: loadRules, health: renderHealth })[tab](params);
}
// Arrow keys move between tabs (the ARIA tabs pattern); Enter follows the link.
$("nav[role=tablist]").addEventListener("keydown", (event) => {
  const tabs = [...document.querySelectorAll("nav [role=tab]")];
  const at = tabs.indexOf(document.activeElement);
  if (at < 0 || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
  const next = tabs[(at + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  event.preventDefault();
});

// -- plans: the worklist -------------------------------------------------------------------------
const selected = new Map(); // plan id -> what the confirmation names
const FILTERS = { q: "#f-q", complete: "#f-complete", source: "#f-source", status: "#f-status", from: "#f-from", to: "#f-to" };

function filtersFromForm() {
  const params = new URLSearchParams();
  for (const [name, selector] of Object.entries(FILTERS)) {
    const value = $(selector).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}
$("#plan-filters").addEventListener("submit", (event) => { event.preventDefault(); navigate("plans", filtersFromForm()); });
$("#f-clear").addEventListener("click", () => { for (const selector of Object.values(FILTERS)) $(selector).value = ""; navigate("plans", new URLSearchParams()); });

function worklistQuery(params) {
  const query = new URLSearchParams();
  for (const name of ["q", "complete", "source", "status", "page", "sort", "order"]) if (params.get(name)) query.set(name, params.get(name));
  // Dates are the user's local days: sent as instants with the offset.
  if (params.get("from")) query.set("from", new Date(params.get("from") + "T00:00:00").toISOString());
  if (params.get("to")) { const end = new Date(params.get("to") + "T00:00:00"); end.setDate(end.getDate() + 1); query.set("to", end.toISOString()); }
  if (FOCUS.get("patient")) query.set("patient", FOCUS.get("patient"));
  if (FOCUS.get("study")) query.set("study", FOCUS.get("study"));
  query.set("per_page", "25");
  return query;
}

async function renderPlans(params, quiet) {
  if (!quiet) {
    for (const [name, selector] of Object.entries(FILTERS)) $(selector).value = params.get(name) || "";
    loadTargets();
    renderSendJobs();
  }
  const detail = $("#plan-detail");
  if (params.get("plan")) {
    $("#worklist").hidden = true; $("#plans-pager").hidden = true; $("#plan-filters").hidden = true; $("#plans-status").hidden = true;
    detail.hidden = false;
    await showPlan(params.get("plan"), params);
    return;
  }
  detail.hidden = true; $("#worklist").hidden = false; $("#plans-pager").hidden = false; $("#plan-filters").hidden = false; $("#plans-status").hidden = false;
  const status = $("#plans-status");
  let answer;
  try {
    answer = await call("worklist?" + worklistQuery(params));
  } catch (error) {
    showMessage(status, "The plan list could not be loaded: " + error.message, false);
    $("#worklist").replaceChildren();
    return;
  }
  const sourceSelect = $("#f-source");
  const wanted = params.get("source") || "";
  sourceSelect.replaceChildren(element("option", { value: "" }, "any"), ...answer.sources.map((s) => element("option", { value: s }, s)));
  sourceSelect.value = wanted;
  const focus = FOCUS.get("study") ? " of this study" : FOCUS.get("patient") ? " of this patient" : "";
  const filtered = [...params.keys()].some((k) => Object.keys(FILTERS).includes(k));
  status.className = "message";
  status.textContent = answer.total
    ? `${answer.total} plan(s)${focus}${filtered ? " match" : ""}; page ${answer.page} of ${answer.pages}.`
    : (filtered ? "No plan matches these filters." : `No plans received yet${focus}.`);
  $("#worklist").replaceChildren(answer.plans.length ? worklistTable(answer.plans, params) : "");
  if (lastPlanRead) {
    const link = [...document.querySelectorAll("tr.plan")].find((row) => row.dataset.plan === lastPlanRead);
    if (link && !quiet) link.querySelector("a.plan-link").focus();
    if (!quiet) lastPlanRead = "";
  }
  $("#plans-updated").textContent = `Updated ${secondsFormat.format(new Date())}.`;
  // The list follows what arrives and what is sent, unless someone is working in it.
  refreshTimer = setTimeout(() => {
    const active = document.activeElement;
    const busy = $("#confirm").open || (active && ($("#worklist").contains(active) || $("#plan-filters").contains(active)));
    if (route().tab === "plans" && !route().params.get("plan") && !busy) renderPlans(route().params, true);
  }, 10000);
  pager($("#plans-pager"), answer.page, answer.pages, (page) => { const next = new URLSearchParams(params); next.set("page", page); navigate("plans", next); });
}

function sortHeader(title, key, params) {
  const current = params.get("sort") || "received";
  const order = params.get("order") || (current === "received" ? "desc" : "asc");
  const next = new URLSearchParams(params);
  next.set("sort", key);
  next.set("order", current === key && order === "asc" ? "desc" : "asc");
  next.delete("page");
  const sorted = current === key ? (order === "asc" ? "ascending" : "descending") : null;
  const link = element("a", { href: "#plans?" + next, class: "sort" }, title, sorted ? (order === "asc" ? " ▲" : " ▼") : "");
  return element("th", { scope: "col", "aria-sort": sorted || "none" }, link);
}

function worklistTable(plans, params) {
  const table = element("table", { class: "data worklist", "aria-label": "Plans received" });
  const head = [
    element("th", { scope: "col" }, element("span", { class: "visually-hidden" }, "Select")),
    sortHeader("Patient", "patient", params),
    sortHeader("Plan", "label", params),
    element("th", { scope: "col" }, "Rx"),
    sortHeader("From", "source", params),
    sortHeader("Received", "received", params),
    element("th", { scope: "col" }, "Complete"),
    element("th", { scope: "col" }, "Where it went"),
  ];
  table.append(element("thead", {}, element("tr", {}, head)));
  const body = element("tbody");
  for (const plan of plans) {
    const who = personName(plan.patient_name) || "(no name)";
    const label = plan.label || "(no label)";
    const box = element("input", { type: "checkbox", class: "plan-check", value: plan.id, "aria-label": `Select ${label}${plan.name ? " (" + plan.name + ")" : ""} of ${who} for sending` });
    box.checked = selected.has(plan.id);
    box.addEventListener("change", () => {
      if (box.checked) selected.set(plan.id, { label, who, patientId: plan.patient_id, born: bornText(plan), name: plan.name, date: plan.date, received: plan.received_at, complete: plan.complete, missing: plan.missing, destinations: plan.destinations });
      else selected.delete(plan.id);
      updateSelection();
    });
    const open = new URLSearchParams(params);
    open.set("plan", plan.id);
    const rx = rxText(plan.prescription_gy, plan.fractions);
    // A plan whose job is done was sent: "sent to ARCHIVE 14:02"; otherwise the queue's word.
    const went = plan.destinations.map((d) => {
      const word = d.state === "done" ? "sent" : stateWord(d.state);
      return element("div", {}, badge(word, d.state === "done" ? "done" : word), ` to ${d.target} `, element("span", { class: "muted" }, shortTime(d.at)));
    });
    if (plan.held) went.unshift(element("div", {}, badge("held", "held"), " waiting for the plan to complete"));
    body.append(element("tr", { class: "plan", "data-plan": plan.id },
      element("td", {}, box),
      element("td", {}, element("div", { class: "strong" }, who), element("div", { class: "muted" }, [plan.patient_id, bornText(plan)].filter(Boolean).join(" · "))),
      element("td", {}, element("a", { class: "plan-link", href: "#plans?" + open }, label),
        element("div", { class: "muted" }, [plan.name, plan.intent ? plan.intent.toLowerCase() : "", dicomDate(plan.date)].filter(Boolean).join(" · "))),
      element("td", {}, rx),
      element("td", {}, plan.source || ""),
      element("td", {}, localTime(plan.received_at)),
      element("td", {}, plan.complete ? badge("complete") : badge("incomplete"), plan.complete ? "" : element("div", { class: "muted" }, "missing: " + plan.missing.join("; ")),
        element("div", { class: "muted" }, Object.entries(plan.counts).map(([m, n]) => `${m} ${n}`).join(", "))),
      element("td", {}, went.length ? went : element("span", { class: "muted" }, "not sent")),
    ));
  }
  table.append(body);
  return table;
}

// Date of birth and sex: the second identifier beside the name.
function bornText(plan) {
  const parts = [];
  if (plan.birth_date) parts.push("born " + dicomDate(plan.birth_date));
  if (plan.sex) parts.push(plan.sex);
  return parts.join(", ");
}
function rxText(rx, fractions) {
  if (!rx) return "";
  const total = `${number(rx, 2)} Gy`;
  return fractions ? `${total} / ${fractions} fx (${number(rx / fractions, 2)} Gy)` : total;
}

function pager(box, page, pages, go) {
  box.replaceChildren();
  if (pages <= 1) return;
  box.append(
    element("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1), "aria-label": "Previous page" }, "‹ Previous"),
    element("span", {}, ` Page ${page} of ${pages} `),
    element("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1), "aria-label": "Next page" }, "Next ›"));
}

// -- sending: only ticks select, a confirmation names everything ----------------------------------
function updateSelection() {
  const list = $("#selection");
  list.replaceChildren(...[...selected].map(([id, plan]) => element("li", {}, `${plan.label}${plan.name ? " (" + plan.name + ")" : ""} — ${plan.who} (${plan.patientId}) `,
    plan.complete ? "" : element("span", { class: "badge incomplete" }, "incomplete"), " ",
    element("button", { type: "button", class: "link", "aria-label": `Remove ${plan.label} from the selection`, onclick: () => { selected.delete(id); updateSelection(); for (const box of document.querySelectorAll(".plan-check")) if (box.value === id) box.checked = false; } }, "remove"))));
  $("#selection-summary").textContent = selected.size ? `${selected.size} plan(s) selected.` : "No plan selected. Tick a plan's box to select it; opening a plan never selects it.";
  updateSendButton();
}
function checkedTargets() { return [...document.querySelectorAll(".target-check")].filter((c) => c.checked).map((c) => c.value); }
function updateSendButton() { $("#send").disabled = !(selected.size && checkedTargets().length); }

let targetsLoaded = false;
async function loadTargets() {
  if (targetsLoaded) return;
  const box = $("#targets");
  let targets = [];
  try { targets = await call("/modalities"); } catch (error) { box.textContent = "Destinations could not be listed: " + error.message; return; }
  targetsLoaded = true;
  box.replaceChildren(...targets.map((name) => element("div", {},
    element("label", {}, element("input", { type: "checkbox", class: "target-check", value: name, onchange: updateSendButton }), " ", name))));
  if (!targets.length) box.textContent = "No destination is configured (Orthanc's DicomModalities).";
  updateSendButton();
}

// Where a plan already went to a target: "sent 8:47", "waiting", ... or nothing.
function alreadyTo(plan, target) {
  const went = (plan.destinations || []).find((d) => d.target === target);
  if (!went || went.state === "dead" || went.state === "cancelled") return "";
  return went.state === "done" ? `already sent ${shortTime(went.at)}` : `already ${stateWord(went.state)}`;
}

// One confirmation for everything that sends: the rows it names, the ticks it wants, one button.
function confirmSending({ title, intro, rows, columns, ticks, button, onConfirm }) {
  $("#confirm-title").textContent = title;
  const boxes = ticks.map((tick) => {
    const box = element("input", { type: "checkbox", class: tick.class });
    box.dataset.key = tick.key;
    box.addEventListener("change", check);
    return { box, tick };
  });
  const groups = {};
  for (const { box, tick } of boxes) (groups[tick.group] = groups[tick.group] || []).push(element("div", {}, element("label", {}, box, " " + tick.text)));
  $("#confirm-body").replaceChildren(element("p", {}, intro), dataTable(rows, columns, title),
    ...Object.entries(groups).map(([legend, items]) => element("fieldset", {}, element("legend", {}, legend), ...items)));
  function check() {
    const open = boxes.filter(({ box }) => !box.checked).length;
    $("#confirm-send").disabled = open > 0;
    $("#confirm-warning").textContent = open ? `${open} item(s) above need their own tick, or cancel.` : "";
  }
  check();
  $("#confirm-send").textContent = button;
  $("#confirm-send").onclick = () => { $("#confirm").close(); onConfirm(boxes.filter(({ box }) => box.checked).map(({ tick }) => tick.key)); };
  $("#confirm").showModal();
  $("#confirm-cancel").focus();
}

$("#send").addEventListener("click", () => {
  const targets = checkedTargets();
  const rows = [];
  for (const [id, plan] of selected) for (const target of targets) rows.push({ id, plan, target, already: alreadyTo(plan, target) });
  const ticks = [];
  for (const [id, plan] of selected) {
    if (!plan.complete) ticks.push({ key: "incomplete:" + id, class: "confirm-incomplete", group: "Incomplete plans are sent only if ticked here", text: `Send ${plan.label} of ${plan.who} although it is incomplete` });
  }
  for (const row of rows) {
    if (row.already) ticks.push({ key: `again:${row.id}:${row.target}`, class: "confirm-again", group: "Plans that already went there are sent again only if ticked here", text: `Send ${row.plan.label} of ${row.plan.who} to ${row.target} again (${row.already})` });
  }
  confirmSending({
    title: "Send these plans?",
    intro: `${rows.length} job(s): ${selected.size} plan(s) to ${targets.join(", ")}, priority ${$("#send-priority").value}.`,
    rows,
    columns: [
      { title: "Patient", value: (r) => element("span", {}, `${r.plan.who} (${r.plan.patientId})`, element("div", { class: "muted" }, r.plan.born || "")) },
      { title: "Plan", value: (r) => element("span", {}, r.plan.label, element("div", { class: "muted" }, [r.plan.name, dicomDate(r.plan.date), "received " + localTime(r.plan.received)].filter(Boolean).join(" · "))) },
      { title: "To", value: (r) => r.target },
      { title: "State", value: (r) => [r.plan.complete ? "complete" : "INCOMPLETE: missing " + r.plan.missing.join("; "), r.already ? r.already.toUpperCase() : ""].filter(Boolean).join("; ") },
    ],
    ticks,
    button: `Send ${rows.length} job(s)`,
    onConfirm: (keys) => sendSelected(targets,
      keys.filter((k) => k.startsWith("incomplete:")).map((k) => k.slice("incomplete:".length)),
      keys.filter((k) => k.startsWith("again:")).map((k) => k.slice("again:".length))),
  });
});

async function sendSelected(targets, confirmedIncomplete, confirmedAgain) {
  const message = $("#send-message");
  try {
    const answer = await call("plans/send", { method: "POST", body: JSON.stringify({ plans: [...selected.keys()], targets, confirm_incomplete: confirmedIncomplete, confirm_again: confirmedAgain, priority: $("#send-priority").value }) });
    const jobs = answer.jobs || [];
    const queued = jobs.filter((j) => j.id);
    showMessage(message, `${queued.length} job(s) queued` + (jobs.length > queued.length ? `, ${jobs.length - queued.length} with nothing new to send` : ""), true);
    const mine = JSON.parse(sessionStorage.getItem("rtgw-sent") || "[]");
    for (const job of queued) {
      const plan = selected.get(job.plan) || {};
      mine.unshift({ id: job.id, label: job.label, name: plan.name || "", target: job.target, who: plan.who || "" });
    }
    sessionStorage.setItem("rtgw-sent", JSON.stringify(mine.slice(0, 20)));
    selected.clear();
    for (const box of document.querySelectorAll(".plan-check")) box.checked = false;
    updateSelection();
    renderSendJobs();
  } catch (error) {
    showMessage(message, "Nothing sent: " + error.message, false);
  }
}
$("#confirm-cancel").addEventListener("click", () => $("#confirm").close());

// The jobs sent from this tab (kept across reloads in the session), with live counts.
let sendTimer = null;
async function renderSendJobs() {
  clearTimeout(sendTimer);
  const mine = JSON.parse(sessionStorage.getItem("rtgw-sent") || "[]");
  const box = $("#send-jobs");
  if (!mine.length) { box.replaceChildren(element("p", { class: "muted" }, "Nothing yet. All jobs are on the Queue tab.")); return; }
  let active = false;
  const rows = [];
  for (const entry of mine.slice(0, 8)) {
    let job = null;
    try { job = await call(`jobs/${entry.id}`); } catch (_) { /* pruned */ }
    if (!job) continue;
    const word = stateWord(job.state);
    active = active || ["pending", "running"].includes(job.state);
    rows.push(element("div", { class: "job", "data-job": entry.id },
      element("div", {}, element("span", { class: "strong" }, entry.label), entry.name ? ` (${entry.name})` : "", ` → ${entry.target} `, badge(word, word)),
      element("div", { class: "muted" }, entry.who),
      element("progress", { max: String(job.instances || 1), value: String(job.sent || 0), "aria-label": `${entry.label} to ${entry.target}` }),
      element("span", { class: "count-text" }, ` ${job.sent} / ${job.instances} instances`),
      job.state === "dead" ? element("div", { class: "message error" }, humanError(job.last_error)) : ""));
  }
  box.replaceChildren(...rows);
  if (active && route().tab === "plans") sendTimer = setTimeout(renderSendJobs, 1000);
}

// -- plan detail in words ------------------------------------------------------------------------
let lastPlanRead = "";
async function showPlan(id, params) {
  lastPlanRead = id;
  const detail = $("#plan-detail");
  const back = new URLSearchParams(params);
  back.delete("plan");
  detail.replaceChildren(element("p", {}, element("a", { href: "#plans?" + back, id: "back-to-list" }, "‹ Back to the plan list")), element("p", { class: "muted" }, "Loading the plan…"));
  let plan;
  try {
    plan = await call(`plans/${encodeURIComponent(id)}`);
  } catch (error) {
    detail.append(element("p", { class: "message error" }, "The plan could not be loaded: " + error.message));
    return;
  }
  const metrics = plan.metrics || {};
  const dvh = plan.dvh || {};
  const rx = metrics.PrescriptionGy || dvh.prescription_gy;
  const title = element("h2", { id: "plan-title", tabindex: "-1" }, `${plan.label || "(no label)"} — ${personName(plan.patient_name) || "(no name)"} (${plan.patient_id})`);
  const summary = element("dl", { class: "summary", id: "plan-summary" },
    ...[["Plan name", plan.name], ["Plan date", dicomDate(plan.date)], ["Intent", metrics.PlanIntent ? String(metrics.PlanIntent).toLowerCase() : ""],
      ["Patient", [plan.patient_id, bornText(plan)].filter(Boolean).join(" · ")],
      ["Prescription", rx ? `${number(rx, 2)} Gy${metrics.Fractions ? ` in ${metrics.Fractions} fractions (${number(rx / metrics.Fractions, 2)} Gy each)` : ""}` : "not in the plan"],
      ["Beams", metrics.BeamCount ? `${metrics.BeamCount} beams, ${number(metrics.TotalMU, 1)} MU per fraction` : ""],
      ["From", plan.calling_aet], ["Completeness", plan.complete ? "complete" : "incomplete: missing " + plan.missing.map(humaneMissing).join("; ")],
      ["Plan UID", shortUid(plan.id)]].filter(([, v]) => v).flatMap(([k, v]) => [element("dt", {}, k), element("dd", {}, v)]));
  const beams = (metrics.beams || []);
  const beamTable = dataTable(beams, [
    { title: "Beam", value: (b) => b.BeamName || b.BeamNumber },
    { title: "Type", value: (b) => [b.BeamType, b.RadiationType].filter(Boolean).join(" ").toLowerCase() },
    { title: "Energy", value: (b) => (b.Energy ? `${number(b.Energy, 0)} ${String(b.RadiationType || "").toUpperCase() === "ELECTRON" ? "MeV" : "MV"}` : ""), class: "num" },
    { title: "Gantry", value: (b) => (b.GantryStart === null || b.GantryStart === undefined ? "" : `${number(b.GantryStart, 1)}°`), class: "num" },
    { title: "MU/fx", value: (b) => number(b.MU, 1), class: "num" },
  ], "Beams");
  beamTable.id = "plan-beams";
  const fileTable = dataTable(plan.files || [], [
    { title: "Object", value: (f) => f.modality },
    { title: "Files", value: (f) => String(f.count), class: "num" },
    { title: "Series", value: (f) => String(f.series), class: "num" },
    { title: "Received", value: (f) => { const first = localTime(f.first_received), last = localTime(f.last_received); return first === last ? first : `${first} – ${shortTime(f.last_received)}`; } },
  ], "Files of the plan");
  fileTable.id = "plan-files";
  const computed = new Map((dvh.computed || []).map((c) => [c.roi, c]));
  const comparison = new Map((dvh.comparison || []).map((c) => [c.roi, c]));
  const structures = (plan.rois || []).length ? plan.rois : [...computed.keys()].map((roi) => ({ ROIName: roi }));
  const cell = (roi, key, digits) => {
    const ours = computed.get(roi);
    const theirs = comparison.get(roi) && comparison.get(roi)[key];
    if (!ours || ours[key] === null || ours[key] === undefined) return "—";
    const main = number(ours[key], digits);
    if (!theirs || theirs.planning_system === null || theirs.planning_system === undefined) return main;
    const diff = theirs.difference;
    return element("span", {}, main, element("span", { class: "muted" }, ` (TPS ${number(theirs.planning_system, digits)}, ${diff > 0 ? "+" : ""}${number(diff, digits)})`));
  };
  const structureTable = dataTable(structures, [
    { title: "Structure", value: (r) => {
      const colour = (computed.get(r.ROIName) || {}).display_color;
      const swatch = element("span", { class: "swatch", "aria-hidden": "true" });
      if (Array.isArray(colour)) swatch.style.backgroundColor = `rgb(${colour.map(Number).join(",")})`;  // CSSOM: allowed by the CSP
      return element("span", {}, swatch, r.ROIName);
    } },
    { title: "Type", value: (r) => (r.ROIType || "").toLowerCase() },
    { title: "Volume (cc)", value: (r) => cell(r.ROIName, "volume_cc", 2), class: "num" },
    { title: "Dmin (Gy)", value: (r) => cell(r.ROIName, "Dmin", 2), class: "num" },
    { title: "Dmean (Gy)", value: (r) => cell(r.ROIName, "Dmean", 2), class: "num" },
    { title: "Dmax (Gy)", value: (r) => cell(r.ROIName, "Dmax", 2), class: "num" },
    { title: "D95 (Gy)", value: (r) => cell(r.ROIName, "D95", 2), class: "num" },
    { title: rx ? `V100% Rx (≥ ${number(rx, 2)} Gy), %` : "V100% Rx, %", value: (r) => cell(r.ROIName, "V_prescription_pct", 1), class: "num" },
  ], "Structures and their doses");
  structureTable.id = "plan-structures";
  const decisions = dataTable(plan.decisions || [], [
    { title: "Rule", value: (r) => r.rule },
    { title: "On", value: (r) => (r.level === "plan" ? "the plan" : "its study") },
    { title: "Fired", value: (r) => (r.matched ? "yes" : "no") },
    { title: "Why", value: (r) => r.reason },
    { title: "When", value: (r) => localTime(r.at) },
  ], "Rule decisions for this plan");
  decisions.id = "plan-decisions";
  const runs = dataTable((plan.rule_runs || []).map((r) => ({ ...r, outcome: { fired: "fired", "not-matched": "did not match", "forwarded-incomplete": "sent incomplete after its wait", held: "held while incomplete" }[r.outcome] || r.outcome })), [
    { title: "Rule", value: (r) => r.rule },
    { title: "Outcome", value: (r) => r.outcome },
    { title: "When", value: (r) => localTime(r.at) },
    { title: "Why", value: (r) => { try { const m = JSON.parse(r.missing_json || "[]"); return m.length ? "missing: " + m.map(humaneMissing).join("; ") : ""; } catch (_) { return ""; } } },
  ], "Rule runs for this plan");
  runs.id = "plan-runs";
  const NAME_STATUS = { kept: "already standard", renamed: "renamed", "no match": "no match in the table", helper: "helper structure (z_), kept", conflict: "kept: another structure has this name", "too long": "kept: the standard name is too long" };
  const namesSent = dataTable(plan.names_sent || [], [
    { title: "Sent to", value: (r) => r.target },
    { title: "Name as planned", value: (r) => r.before },
    { title: "Name sent", value: (r) => r.after || r.before },
    { title: "Why", value: (r) => NAME_STATUS[r.status] || r.status },
    { title: "When", value: (r) => localTime(r.at) },
  ], "Structure and plan names as each destination received them");
  namesSent.id = "plan-names-sent";
  // Reading a plan never selects it; this box does, as the list's does.
  const pick = element("input", { type: "checkbox", id: "detail-select" });
  pick.checked = selected.has(plan.id);
  pick.addEventListener("change", () => {
    if (pick.checked) {
      selected.set(plan.id, { label: plan.label || "(no label)", who: personName(plan.patient_name) || "(no name)", patientId: plan.patient_id, born: bornText(plan),
        name: plan.name, date: plan.date, received: plan.received_at, complete: plan.complete, missing: plan.missing.map(humaneMissing), destinations: detailDestinations });
    } else selected.delete(plan.id);
    updateSelection();
  });
  const chart = element("div", { id: "dvh-chart", class: "dvh-box" });
  const notes = element("p", { id: "dvh-notes", class: "muted" });
  detail.replaceChildren(
    element("p", {}, element("a", { href: "#plans?" + back, id: "back-to-list" }, "‹ Back to the plan list")),
    title,
    element("p", {}, element("label", {}, pick, " Select this plan for sending")),
    element("div", { class: "detail-columns" },
      element("div", {}, summary, element("h3", {}, "Beams"), beams.length ? beamTable : element("p", { class: "muted" }, "No beams indexed yet.")),
      element("div", {}, element("h3", {}, "Dose–volume histogram"), chart)),
    element("h3", {}, "Structures"), structureTable, notes,
    element("h3", {}, "Where it went"), element("div", { id: "plan-sent" }, "Loading…"),
    (plan.names_sent || []).length ? element("h3", {}, "Names sent (TG-263)") : "", (plan.names_sent || []).length ? namesSent : "",
    element("div", { class: "detail-columns" },
      element("div", {}, element("h3", {}, "Files"), fileTable),
      element("div", {}, element("h3", {}, "Rules for this plan"), (plan.decisions || []).length ? decisions : element("p", { class: "muted" }, "No rule has decided on this plan or its study yet."),
        plan.study_uid ? element("p", {}, element("a", { href: "#rules?" + new URLSearchParams({ study: plan.study_uid }), id: "test-rules-on-study" }, "Try the rules in force on this plan's study")) : "",
        (plan.rule_runs || []).length ? element("h4", {}, "Plan-complete rule runs") : "", (plan.rule_runs || []).length ? runs : "")));
  title.focus();
  if (window.RtDvh) window.RtDvh.draw(chart, dvh, { title: plan.label || "plan", filenameBase: `dvh_${plan.label || "plan"}` });
  else chart.textContent = "The DVH chart could not be loaded.";
  notes.textContent = dvhNotes(dvh);
  loadPlanDestinations(plan);
}

function humaneMissing(text) { return String(text).replace(/\b\d+(\.\d+){3,}\b/g, "(referenced, not received)"); }

function dvhNotes(dvh) {
  // The conventions travel with the numbers: a small structure's volume depends on them (README).
  const notes = dvh.method ? [`Computed: ${dvh.method}.`] : [];
  if (dvh.complete === false && (dvh.computed || []).length) notes.push("The plan is incomplete (" + (dvh.missing || []).map(humaneMissing).join("; ") + ").");
  if (dvh.dose_conversion) notes.push(dvh.dose_conversion + ".");
  if (dvh.error) notes.push(dvh.error);
  for (const skipped of dvh.not_computed || []) notes.push(`No DVH for ${skipped.roi}: ${skipped.reason}.`);
  for (const small of dvh.computed || []) {
    if (small.volume_cc_slabs === undefined) continue;
    notes.push(`${small.roi}: ${Number(small.volume_cc).toFixed(3)} cc, ${Number(small.volume_cc_slabs).toFixed(3)} cc counted as slabs (a small structure's volume depends on the convention).`);
  }
  for (const row of dvh.comparison || []) for (const check of row.checks || []) notes.push(`${row.roi}: ${check}.`);
  // Without curves the chart itself says why in one sentence: no second sentence here.
  return (dvh.computed || []).length ? notes.join(" ") : "";
}

let detailDestinations = [];
async function loadPlanDestinations(plan) {
  detailDestinations = [];
  const box = $("#plan-sent");
  try {
    const answer = await call("worklist?" + new URLSearchParams({ patient: plan.patient_id || "", q: plan.label || "", per_page: "200" }));
    const mine = answer.plans.find((p) => p.id === plan.id);
    const went = mine ? mine.destinations : [];
    detailDestinations = went;
    box.replaceChildren(went.length ? dataTable(went, [
      { title: "To", value: (d) => d.target },
      { title: "State", value: (d) => badge(stateWord(d.state), stateWord(d.state)) },
      { title: "When", value: (d) => localTime(d.at) },
    ], "Where the plan went") : element("p", { class: "muted" }, "Not sent anywhere yet."));
  } catch (error) {
    box.textContent = "Could not be loaded: " + error.message;
  }
}

// -- queue: live ---------------------------------------------------------------------------------
const QUEUE_VIEWS = [["active", "Waiting and sending"], ["held", "Awaiting approval"], ["parked", "Parked"], ["done", "Done"], ["cancelled", "Cancelled"]];
async function renderQueue(params) {
  const view = params.get("view") || "active";
  const target = params.get("target") || "";
  const page = Number(params.get("page") || 1);
  let answer;
  try {
    answer = await call("queue?" + new URLSearchParams({ view, target, page: String(page), per_page: "25" }));
  } catch (error) {
    showMessage($("#queue-summary"), "The queue could not be loaded: " + error.message, false);
    refreshTimer = setTimeout(() => render(), 5000);
    return;
  }
  const counts = answer.counts;
  const countOf = (v) => (v === "active" ? (counts.waiting || 0) + (counts.sending || 0) : counts[v] || 0);
  $("#queue-views").replaceChildren(...QUEUE_VIEWS.map(([key, title]) => {
    const next = new URLSearchParams({ view: key });
    return element("a", { href: "#queue?" + next, class: key === view ? "active" : "", "aria-current": key === view ? "page" : null }, `${title} (${countOf(key)})`);
  }));
  $("#queue-summary").className = "muted";
  $("#queue-summary").textContent = `${counts.sending || 0} sending, ${counts.waiting || 0} waiting, ${counts.parked || 0} parked. Updated ${secondsFormat.format(new Date())}.`;
  $("#queue-badge").textContent = counts.parked ? `${counts.parked} parked` : "";
  const actions = $("#queue-actions");
  actions.replaceChildren(element("label", {}, "Target ", element("select", { id: "queue-target", onchange: (e) => navigate("queue", new URLSearchParams({ view, target: e.target.value })) },
    element("option", { value: "" }, "all"), ...answer.targets.map((t) => element("option", { value: t, selected: t === target }, t)))));
  if (view === "parked" && answer.total) {
    for (const name of answer.parked_targets.filter((t) => !target || t === target)) {
      actions.append(element("button", { type: "button", class: "retry-all", onclick: () => retryAllParked(name) }, `Retry all parked for ${name}…`));
    }
  }
  const what = (j) => `${j.plan_label ? "plan " + j.plan_label : j.kind} of ${personName(j.patient_name) || j.patient_id || "?"} to ${j.target}`;
  const act = (path, what) => async () => {
    try { await call(path, { method: "POST" }); } catch (error) { showMessage($("#queue-summary"), `${what}: ${error.message}`, false); return; }
    render();
  };
  $("#queue-table").replaceChildren(answer.jobs.length ? dataTable(answer.jobs, [
    { title: "Patient", value: (j) => element("span", {}, personName(j.patient_name) || "", element("div", { class: "muted" }, j.patient_id || "")) },
    { title: "What", value: (j) => (j.plan_label ? element("span", {}, `plan ${j.plan_label}`, element("div", { class: "muted" }, [j.plan_name, dicomDate(j.plan_date)].filter(Boolean).join(" · "))) : `${j.kind}${j.action !== "forward" ? " (" + j.action + ")" : ""}`) },
    { title: "Rule", value: (j) => (j.manual ? "sent by hand" : j.rule) },
    { title: "To", value: (j) => j.target },
    { title: "Progress", value: (j) => element("span", {}, element("progress", { max: String(j.instances || 1), value: String(j.sent), "aria-label": what(j) }), ` ${j.sent} / ${j.instances} instances`, j.refused ? `, ${j.refused} refused` : "", j.gone ? `, ${j.gone} deleted before sending` : "") },
    { title: "State", value: (j) => badge(j.state, j.state) },
    view === "active" || view === "parked" || view === "held"
      ? { title: "Age", value: (j) => age(j.created_epoch) }
      : { title: "Finished", value: (j) => secondsTime(j.updated_at) },
    { title: "Why", value: (j) => j.waiting_for || (j.state === "waiting" && j.attempts ? element("span", {}, `retry ${j.attempts + 1} at ${shortTime(j.next_attempt_at)}: `, humanError(j.last_error)) : humanError(j.last_error)) },
    { title: "", value: (j) => element("span", { class: "actions" },
      j.state === "parked" ? element("button", { type: "button", onclick: act(`jobs/${j.id}/retry`, "Retry"), "aria-label": `Retry job ${j.id}: ${what(j)}` }, "Retry") : "",
      ["parked", "waiting", "awaiting approval"].includes(j.state) ? element("button", { type: "button", onclick: () => { if (confirm(`Cancel sending ${what(j)}? Nothing more of it will be sent.`)) act(`jobs/${j.id}/cancel`, "Cancel")(); }, "aria-label": `Cancel job ${j.id}: ${what(j)}` }, "Cancel") : "") },
  ], "Jobs") : element("p", { class: "muted" }, view === "active" ? "Nothing waiting or sending." : "None."));
  pager($("#queue-pager"), answer.page, answer.pages, (p) => navigate("queue", new URLSearchParams({ view, target, page: String(p) })));
  // Live while the tab is shown: every 2 s (a queue of thousands is paged, not downloaded).
  refreshTimer = setTimeout(() => { if (route().tab === "queue") render(); }, 2000);
}

async function retryAllParked(target) {
  let answer;
  try { answer = await call("queue?" + new URLSearchParams({ view: "parked", target, per_page: "200" })); } catch (error) { showMessage($("#queue-summary"), error.message, false); return; }
  confirmSending({
    title: `Retry everything parked for ${target}?`,
    intro: `${answer.total} parked job(s) will be sent to ${target} again.`,
    rows: answer.jobs,
    columns: [
      { title: "Patient", value: (j) => `${personName(j.patient_name) || ""} (${j.patient_id || "?"})` },
      { title: "What", value: (j) => (j.plan_label ? `plan ${j.plan_label}` : j.kind) },
      { title: "To", value: (j) => j.target },
      { title: "Sent so far", value: (j) => `${j.sent} / ${j.instances}` },
    ],
    ticks: [],
    button: `Retry ${answer.total} job(s)`,
    onConfirm: async () => {
      try { const r = await call("jobs/retry-parked", { method: "POST", body: JSON.stringify({ target }) }); showMessage($("#queue-summary"), `${r.retried.length} parked job(s) for ${target} retried.`, true); } catch (error) { showMessage($("#queue-summary"), error.message, false); }
      refreshTimer = setTimeout(render, 800);
    },
  });
}

// -- activity ------------------------------------------------------------------------------------
const AUDIT_COLUMNS = {
  transfers: [["Time", (r) => localTime(r.started_at)], ["Patient", (r) => r.patient_id], ["Rule", (r) => r.rule], ["To", (r) => r.target],
    ["Outcome", (r) => badge(r.status)], ["Instances", (r) => r.instances], ["MB", (r) => number(r.bytes / 1e6, 1)], ["Attempt", (r) => r.attempt], ["Error", (r) => humanError(r.error)], ["Study", (r) => shortUid(r.study_uid)]],
  evaluations: [["Time", (r) => localTime(r.at)], ["Patient", (r) => r.patient_id], ["Rule", (r) => r.rule], ["On", (r) => r.trigger],
    ["Matched", (r) => (r.matched ? "yes" : "no")], ["Why", (r) => r.reason], ["New instances", (r) => r.new_instances], ["Study", (r) => shortUid(r.study_uid)]],
  events: [["Time", (r) => localTime(r.at)], ["Event", (r) => String(r.event).replace(/-/g, " ")], ["Outcome", (r) => r.status], ["Patient", (r) => r.patient_id],
    ["Rule", (r) => r.rule], ["Target", (r) => r.target], ["Detail", (r) => r.detail], ["Study", (r) => shortUid(r.study_uid)]],
  received: [["Time", (r) => localTime(r.received_at)], ["From", (r) => r.calling_aet], ["Address", (r) => r.remote_ip], ["Patient", (r) => r.patient_id],
    ["Modality", (r) => r.modality], ["Plan label", (r) => r.plan_label], ["State", (r) => r.state], ["Study", (r) => shortUid(r.study_uid)]],
  quarantine: [["Time", (r) => localTime(r.at)], ["Reason", (r) => r.reason], ["Detail", (r) => r.detail], ["Where", (r) => r.file_path]],
};
const AUDIT_PAGE = 50;

async function renderActivity(params) {
  loadStats();
  for (const name of ["kind", "patient", "study", "rule", "target", "status"]) {
    const input = $(`#audit-${name}`);
    input.value = params.get(name) || (name === "kind" ? "transfers" : "");
  }
  $("#audit-since").value = params.get("since") || "";
  $("#audit-until").value = params.get("until") || "";
  const page = Number(params.get("page") || 1);
  const query = new URLSearchParams({ kind: params.get("kind") || "transfers", order: "desc", limit: String(AUDIT_PAGE + 1), offset: String((page - 1) * AUDIT_PAGE) });
  for (const name of ["patient", "study", "rule", "target", "status"]) if (params.get(name)) query.set(name, params.get(name));
  if (params.get("since")) query.set("since", new Date(params.get("since")).toISOString());
  if (params.get("until")) query.set("until", new Date(params.get("until")).toISOString());
  const everything = new URLSearchParams(query);
  everything.delete("offset");
  everything.set("limit", "100000");
  $("#audit-csv").href = API + "audit?" + everything + "&format=csv";
  let rows;
  try {
    rows = await call("audit?" + query);
    $("#audit-message").textContent = "";
  } catch (error) {
    showMessage($("#audit-message"), "The audit could not be loaded: " + error.message, false);
    return;
  }
  const more = rows.length > AUDIT_PAGE;
  rows = rows.slice(0, AUDIT_PAGE);
  const kind = query.get("kind");
  lastAudit = { rows, columns: AUDIT_COLUMNS[kind], kind };
  $("#audit").replaceChildren(rows.length ? dataTable(rows, AUDIT_COLUMNS[kind].map(([title, value]) => ({ title, value })), "Audit, newest first") : element("p", { class: "muted" }, "Nothing recorded for these filters."));
  const box = $("#audit-pager");
  box.replaceChildren(
    element("button", { type: "button", disabled: page <= 1, onclick: () => { const p = new URLSearchParams(params); p.set("page", String(page - 1)); navigate("activity", p); } }, "‹ Newer"),
    element("span", {}, ` Page ${page} `),
    element("button", { type: "button", disabled: !more, onclick: () => { const p = new URLSearchParams(params); p.set("page", String(page + 1)); navigate("activity", p); } }, "Older ›"));
}
// The page's CSV: the columns and rows shown, in the page's words, full UIDs where the page
// shortens them; a cell that could start a formula in a spreadsheet is quoted as text.
let lastAudit = null;
function cellText(value) {
  if (value === null || value === undefined) return "";
  if (!(value instanceof Node)) return String(value);
  const uid = value.querySelector && value.querySelector("[title]");
  return uid && value.classList.contains("uid") ? uid.getAttribute("title") : value.textContent;
}
function csvCell(text) {
  let cell = String(text);
  if (/^[=+\-@\t\r]/.test(cell)) cell = "'" + cell;
  return /[",\n\r]/.test(cell) ? `"${cell.replace(/"/g, '""')}"` : cell;
}
$("#audit-csv-shown").addEventListener("click", () => {
  if (!lastAudit) return;
  const lines = [lastAudit.columns.map(([title]) => csvCell(title)).join(",")];
  for (const row of lastAudit.rows) lines.push(lastAudit.columns.map(([, value]) => csvCell(cellText(value(row)))).join(","));
  const link = element("a", { href: "data:text/csv;charset=utf-8," + encodeURIComponent(lines.join("\r\n") + "\r\n"), download: `audit-${lastAudit.kind}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
});
$("#audit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const name of ["kind", "patient", "study", "rule", "target", "status", "since", "until"]) {
    const value = $(`#audit-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  navigate("activity", params);
});

// Storage commitment per target: only targets configured for it have the numbers.
function commitmentText(commitment) {
  if (!commitment) return "";
  const parts = [`${commitment.committed}`];
  if (commitment.waiting) parts.push(`${commitment.waiting} waiting`);
  if (commitment.not_committed) parts.push(`${commitment.not_committed} NOT committed`);
  return parts.join(", ");
}

async function loadStats() {
  let stats;
  try { stats = await call("stats"); } catch (error) { $("#stats").textContent = "Statistics could not be loaded: " + error.message; return; }
  const rows = [];
  for (const [group, entries] of Object.entries(stats)) {
    // Each manual send is its own "rule" in the queue (so Send twice sends twice): one line here.
    const byHand = { by: "rule", name: "sent by hand", sent: 0, instances_parked: 0, pending: 0, parked: 0 };
    for (const [name, s] of Object.entries(entries)) {
      if (group === "by_rule" && name.startsWith("manual-send ")) {
        for (const key of ["sent", "instances_parked", "pending", "parked"]) byHand[key] += s[key] || 0;
        if (s.last_error && (!byHand.last_error_at || s.last_error_at > byHand.last_error_at)) Object.assign(byHand, { last_error: s.last_error, last_error_at: s.last_error_at });
        continue;
      }
      rows.push({ by: group === "by_target" ? "target" : "rule", name, ...s });
    }
    if (group === "by_rule" && (byHand.sent || byHand.pending || byHand.parked || byHand.instances_parked)) rows.push(byHand);
  }
  // Delivery counts instances, not attempts: retries to a node that was down cost nothing here.
  $("#stats").replaceChildren(rows.length ? dataTable(rows, [
    { title: "", value: (r) => r.by },
    { title: "Name", value: (r) => r.name },
    { title: "Delivered", value: (r) => `${r.sent} instance(s)`, class: "num" },
    { title: "Finally failed", value: (r) => `${r.instances_parked || 0} instance(s)`, class: "num" },
    { title: "Delivered share", value: (r) => { const all = r.sent + (r.instances_parked || 0); return all ? `${Math.round((100 * r.sent) / all)} %` : ""; }, class: "num" },
    { title: "Committed", value: (r) => commitmentText(r.commitment) },
    { title: "Jobs waiting", value: (r) => r.pending, class: "num" },
    { title: "Jobs parked", value: (r) => r.parked, class: "num" },
    { title: "Last error", value: (r) => (r.last_error ? element("span", {}, humanError(r.last_error), ` (${shortTime(r.last_error_at)})`) : "") },
  ], "Delivery per target and per rule") : element("p", { class: "muted" }, "Nothing sent yet."));
}

// -- rules -------------------------------------------------------------------------------------
async function loadRules(params) {
  // Opened from a plan's page (#rules?study=<uid>): the rules tried on that study at once.
  const study = params && params.get("study");
  if (study && $("#test-study").value !== study) {
    $("#test-study").value = study;
    $("#test-form").requestSubmit();
  }
  try {
    const rules = await call("rules");
    $("#rules-file").textContent = `${rules.file} — sha256 ${rules.sha256}`;
    $("#rules-yaml").textContent = rules.text || JSON.stringify(rules.rules, null, 2);
  } catch (error) {
    showMessage($("#rules-message"), "The rules could not be loaded: " + error.message, false);
  }
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
    result.replaceChildren(dataTable(answer.rules, [
      { title: "Rule", value: (r) => r.rule }, { title: "On", value: (r) => r.on }, { title: "Would fire", value: (r) => (r.would_fire ? "yes" : "no") },
      { title: "Failed condition", value: (r) => r.failed_condition || "" }, { title: "Why", value: (r) => r.reason }, { title: "Instances", value: (r) => r.instances },
      { title: "Targets", value: (r) => r.targets.join(", ") },
      { title: "Conditions", value: (r) => element("ul", { class: "conditions" }, ...(r.conditions || []).map((c) =>
        element("li", { class: c.holds ? "holds" : "fails" }, `${c.holds ? "✔" : "✘"} ${c.condition}: ${c.reason}`))) },
    ]));
  } catch (error) {
    result.replaceChildren(element("tr", {}, element("td", { class: "message error" }, error.message)));
  }
});

// -- health --------------------------------------------------------------------------------------
async function renderHealth() {
  let report;
  const message = $("#health-message");
  try {
    report = await call("health");
    showMessage(message, "The gateway is running.", true);
  } catch (error) {
    if (!error.body || !error.body.problems) { showMessage(message, "Health could not be read: " + error.message, false); return; }
    report = error.body;
    showMessage(message, "Not healthy: " + report.problems.join("; "), false);
  }
  $("#health-badge").textContent = report.problems && report.problems.length ? "!" : "";
  const queue = report.queue || {};
  const rows = [
    ["Queue", `${queue.pending || 0} waiting, ${queue.running || 0} sending, ${queue.parked || 0} parked`],
    ["Oldest waiting job", queue.oldest_pending_seconds === null || queue.oldest_pending_seconds === undefined ? "none" : age(Date.now() / 1000 - queue.oldest_pending_seconds)],
    ["Database", report.database_writable ? "writable" : "NOT writable"],
    ...Object.entries(report.disk || {}).map(([what, d]) => [`Free disk (${what})`, `${(d.free_mb / 1024).toFixed(1)} GB in ${d.folder}`]),
    ...Object.entries(report.workers || {}).map(([index, w]) => [`Worker ${index}`, typeof w === "object" ? (w.alive ? `running (pid ${w.pid})` : `NOT running${w.pid ? " (pid " + w.pid + ")" : ""}`) : String(w)]),
  ];
  $("#health").replaceChildren(dataTable(rows, [{ title: "What", value: (r) => r[0] }, { title: "State", value: (r) => r[1] }], "Health"));
  let targets = [];
  try { targets = await call("targets"); } catch (error) { $("#destinations").textContent = "Destinations could not be listed: " + error.message; return; }
  const silent = targets.filter((t) => t.last_echo && !t.last_echo.ok).map((t) => t.name);
  const parked = (report.queue || {}).parked || 0;
  if (!(report.problems || []).length && (silent.length || parked)) {
    message.className = "message warning";
    message.textContent = "The gateway is running, but " + [parked ? `${parked} job(s) are parked (not delivered: see the Queue)` : "", silent.length ? `${silent.join(", ")} did not answer its last C-ECHO` : ""].filter(Boolean).join("; ") + ".";
    $("#health-badge").textContent = "!";
  }
  let states = {};
  try { for (const d of await call("destinations")) states[d.name] = d; } catch (_) { states = {}; }
  $("#destinations").replaceChildren(dataTable(targets, [
    { title: "Destination", value: (t) => t.name },
    { title: "Policy", value: (t) => (states[t.name] ? states[t.name].policy : "") },
    { title: "Now", value: (t) => destinationNow(states[t.name]) },
    { title: "Waiting", value: (t) => waitingText(states[t.name]) },
    { title: "Last C-ECHO", value: (t) => element("span", { id: "echo-" + t.name.replace(/[^A-Za-z0-9_-]/g, "_") }, echoText(t.last_echo)) },
    { title: "", value: (t) => element("button", { type: "button", onclick: () => echo(t.name), "aria-label": `Check ${t.name} now (C-ECHO)` }, "Check now") },
  ], "Destinations"));
  renderCleanup();
  renderNamesAndWebhooks();
}
const UNMAPPED_WHY = { "no match": "no match in the table", helper: "helper structure (z_), never renamed", conflict: "another structure has this name", "too long": "the standard name is too long" };
async function renderNamesAndWebhooks() {
  try {
    const unmapped = await call("names/unmapped?limit=20");
    $("#unmapped-names").replaceChildren(unmapped.names.length ? dataTable(unmapped.names, [
      { title: "Name as planned", value: (n) => n.name },
      { title: "Why unchanged", value: (n) => UNMAPPED_WHY[n.status] || n.status },
      { title: "Copies", value: (n) => n.copies, class: "num" },
      { title: "Last seen", value: (n) => localTime(n.last_seen) },
    ], "Names without a TG-263 match") : element("p", { class: "muted" }, "None: every name sent so far matched."));
  } catch (error) { $("#unmapped-names").textContent = "Could not be read: " + error.message; }
  try {
    const hooks = (await call("webhooks")).webhooks;
    $("#webhooks").replaceChildren(hooks.length ? dataTable(hooks, [
      { title: "Receiver", value: (w) => w.url + (w.configured ? "" : " (no longer configured)") },
      { title: "Delivered", value: (w) => w.delivered, class: "num" },
      { title: "Waiting", value: (w) => w.pending, class: "num" },
      { title: "State", value: (w) => (w.failing && w.next ? `failing since ${localTime(w.next.failing_since)}: ${w.next.last_error || "no answer"}${w.next.next_attempt_at ? "; next try " + localTime(w.next.next_attempt_at) : ""}` : "ok") },
    ], "Webhooks") : element("p", { class: "muted" }, "No webhook is configured (RtGateway.Webhooks)."));
  } catch (error) { $("#webhooks").textContent = "Could not be read: " + error.message; }
}
function destinationNow(d) {
  if (!d) return "";
  const window = d.windows.length ? (d.window_open ? `window open${d.window_changes_at ? " until " + shortTime(d.window_changes_at) : ""}` : `WINDOW CLOSED${d.window_changes_at ? ", opens " + shortTime(d.window_changes_at) : ""}`) : "";
  const load = `${d.associations} association(s)${d.max_associations ? " of " + d.max_associations : ""}, ${d.sent_last_minute} instance(s) in the last minute${d.max_instances_per_minute ? " of " + d.max_instances_per_minute : ""}`;
  return [window, load].filter(Boolean).join("; ");
}
function waitingText(d) {
  if (!d) return "";
  const byPriority = Object.entries(d.waiting_by_priority).map(([p, n]) => `${n} ${p}`).join(", ");
  const approval = d.awaiting_approval ? `${d.awaiting_approval} awaiting approval` : "";
  return [[byPriority ? `${byPriority} job(s)` : "nothing", d.held].filter(Boolean).join(": "), approval].filter(Boolean).join("; ");
}

// -- storage clean-up (a dry run: what would go, and why each other study stays) ------------------
const CLEANUP_PAGE = 25;
let cleanupPage = 1;
async function renderCleanup() {
  const message = $("#cleanup-message");
  let review;
  try {
    review = await call("cleanup?" + new URLSearchParams({ verdict: $("#cleanup-verdict").value, offset: String((cleanupPage - 1) * CLEANUP_PAGE), limit: String(CLEANUP_PAGE) }));
  } catch (error) { showMessage(message, "The clean-up could not be reviewed: " + error.message, false); return; }
  const policy = review.policy;
  const limits = [
    policy.older_than_days !== null ? `studies received more than ${number(policy.older_than_days, 1)} days ago` : "",
    policy.storage_above_mb !== null ? `the oldest while Orthanc's storage is above ${number(policy.storage_above_mb / 1024, 1)} GB` : "",
    policy.disk_used_above_percent !== null ? `the oldest while its disk is more than ${policy.disk_used_above_percent} % full` : "",
  ].filter(Boolean);
  $("#cleanup-policy").textContent = policy.active
    ? `Deletes ${limits.join("; ")}, never while anything still needs them; quiet for ${policy.quiet_minutes} min first, checked every ${policy.check_every_minutes} min. Orthanc's storage: ${number(review.storage.orthanc_mb / 1024, 2)} GB, disk ${review.storage.disk_used_percent} % full.`
    : `No clean-up policy in the rules file ('cleanup:'): nothing is ever deleted. Orthanc's storage: ${number(review.storage.orthanc_mb / 1024, 2)} GB, disk ${review.storage.disk_used_percent} % full.`;
  const last = review.last_round;
  showMessage(message, `${review.would_delete} study(ies) would be deleted now, ${review.would_keep} stay.` + (last ? ` Last round ${localTime(last.at)}: ${last.deleted.length} deleted.` : "") + (review.storage.over ? ` ${review.storage.over}.` : ""), !review.storage.over);
  $("#cleanup-run").disabled = !policy.active || !review.would_delete;
  $("#cleanup-run").dataset.count = String(review.would_delete);
  $("#cleanup-studies").replaceChildren(review.studies.length ? dataTable(review.studies, [
    { title: "Patient", value: (s) => `${personName(s.patient_name) || "(no name)"} (${s.patient_id || "?"})` },
    { title: "Study", value: (s) => [s.description || "(no description)", dicomDate(s.study_date)].filter(Boolean).join(" · ") },
    { title: "Received", value: (s) => (s.last_arrival ? localTime(s.last_arrival) : "no record") },
    { title: "Verdict", value: (s) => badge(s.verdict === "delete" ? "would be deleted" : "stays", s.verdict === "delete" ? "dead" : "done") },
    { title: "Why", value: (s) => humanError(s.reason) },
  ], "Storage clean-up") : element("p", { class: "muted" }, "No study to show."));
  pager($("#cleanup-pager"), cleanupPage, Math.max(1, Math.ceil(review.total / CLEANUP_PAGE)), (page) => { cleanupPage = page; renderCleanup(); });
}
$("#cleanup-verdict").addEventListener("change", () => { cleanupPage = 1; renderCleanup(); });
$("#cleanup-run").addEventListener("click", async () => {
  let review;
  try { review = await call("cleanup?verdict=delete&limit=1000"); } catch (error) { showMessage($("#cleanup-message"), error.message, false); return; }
  confirmSending({
    title: "Delete these studies from Orthanc's storage?",
    intro: `${review.total} study(ies) will be deleted from this gateway's Orthanc (each is re-checked just before). Nothing is deleted at the destinations. This cannot be undone here.`,
    rows: review.studies,
    columns: [
      { title: "Patient", value: (s) => `${personName(s.patient_name) || "(no name)"} (${s.patient_id || "?"})` },
      { title: "Study", value: (s) => [s.description, dicomDate(s.study_date)].filter(Boolean).join(" · ") },
      { title: "Why", value: (s) => s.reason },
    ],
    ticks: [],
    button: `Delete ${review.total} study(ies)`,
    onConfirm: async () => {
      let text, ok;
      try {
        const result = await call("cleanup/run", { method: "POST", body: JSON.stringify({ confirm: true }) });
        [text, ok] = [`Clean-up done: ${result.deleted.length} study(ies) deleted, ${result.kept} kept` + (result.failed.length ? `; ${result.failed.length} could not be deleted` : "") + ".", !result.failed.length];
      } catch (error) { [text, ok] = ["Nothing deleted: " + error.message, false]; }
      await renderCleanup();
      showMessage($("#cleanup-message"), text, ok);  // the round's outcome is what stays on screen
    },
  });
});

function echoText(last) {
  if (!last) return "never checked";
  return last.ok ? `answered at ${secondsTime(last.at)} (${Math.round(last.seconds * 1000)} ms)` : element("span", { title: last.error }, `NO ANSWER at ${secondsTime(last.at)}: the node did not answer the C-ECHO (is it running, are its AE title and port right?)`);
}
async function echo(name) {
  const cell = document.getElementById("echo-" + name.replace(/[^A-Za-z0-9_-]/g, "_"));
  if (cell) cell.textContent = "checking…";
  try {
    const last = await call(`targets/${encodeURIComponent(name)}/echo`, { method: "POST" });
    if (cell) cell.replaceChildren(echoText(last));
  } catch (error) {
    if (cell) cell.textContent = "could not be checked: " + error.message;
  }
}

// The parked count on the Queue tab, whatever tab is open (a parked job needs someone).
async function refreshBadges() {
  try {
    const answer = await call("queue?view=parked&per_page=1&counts=live");
    $("#queue-badge").textContent = answer.counts.parked ? `${answer.counts.parked} parked` : "";
    const approvals = await call("approvals?state=waiting&limit=1");
    $("#approvals-badge").textContent = approvals.total ? `${approvals.total} waiting` : "";
  } catch (_) { /* the tab itself says what failed */ }
  setTimeout(refreshBadges, 10000);
}

// "Skip to the plans": past the header and the filters, to the first plan of the list.
$("#skip-to-plans").addEventListener("click", () => {
  const first = document.querySelector("tr.plan a.plan-link");
  if (first) first.focus(); else $("#f-q").focus();
});

render();
refreshBadges();
