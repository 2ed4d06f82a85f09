// The Approvals tab: what a rule holds until a person approves it, decided per destination in one
// dialog (ticks, a comment, Approve or Reject). Loaded before app.js; uses its helpers when called.
"use strict";

const APPROVAL_VIEWS = [["waiting", "Waiting"], ["decided", "Decided"], ["expired", "Expired"], ["all", "All"]];
const APPROVALS_PER_PAGE = 25;

async function renderApprovals(params) {
  const state = params.get("state") || "waiting";
  const page = Number(params.get("page") || 1);
  let answer;
  try {
    answer = await call("approvals?" + new URLSearchParams({ state, offset: String((page - 1) * APPROVALS_PER_PAGE), limit: String(APPROVALS_PER_PAGE) }));
  } catch (error) {
    showMessage($("#approvals-summary"), "The approvals could not be loaded: " + error.message, false);
    refreshTimer = setTimeout(() => render(), 5000);
    return;
  }
  const counts = answer.counts;
  const countOf = (key) => (key === "all" ? Object.values(counts).reduce((a, b) => a + b, 0) : counts[key] || 0);
  $("#approval-views").replaceChildren(...APPROVAL_VIEWS.map(([key, title]) =>
    element("a", { href: "#approvals?" + new URLSearchParams({ state: key }), class: key === state ? "active" : "", "aria-current": key === state ? "page" : null }, `${title} (${countOf(key)})`)));
  $("#approvals-summary").className = "muted";
  $("#approvals-summary").textContent = `${counts.waiting || 0} waiting for a decision. Updated ${secondsFormat.format(new Date())}.`;
  $("#approvals-badge").textContent = counts.waiting ? `${counts.waiting} waiting` : "";
  $("#approvals-table").replaceChildren(answer.approvals.length ? dataTable(answer.approvals, [
    { title: "Patient", value: (a) => element("span", {}, personName(a.patient_name) || "", element("div", { class: "muted" }, a.patient_id)) },
    { title: "What", value: (a) => approvalWhat(a) },
    { title: "Rule", value: (a) => a.rule },
    { title: "Held since", value: (a) => element("span", {}, shortTime(a.created_at), element("div", { class: "muted" }, age(a.created_at) + " ago")) },
    { title: a_state(state), value: (a) => (a.state === "waiting" ? element("span", {}, shortTime(a.expires_at), element("div", { class: "muted" }, a.approvers.length ? "by " + a.approvers.join(", ") : "any signed-in user")) : badge(a.state, a.state)) },
    { title: "Destinations", value: (a) => element("div", {}, a.targets.map(targetLine)) },
    { title: "", value: (a) => (a.state === "waiting" ? element("button", { type: "button", class: "primary", onclick: () => openDecision(a), "aria-label": `Decide for ${approvalWords(a)}` }, "Decide…") : "") },
  ], "Approvals") : element("p", { class: "muted" }, state === "waiting" ? "Nothing is waiting for approval." : "None."));
  pager($("#approvals-pager"), page, Math.max(1, Math.ceil(answer.total / APPROVALS_PER_PAGE)), (p) => navigate("approvals", new URLSearchParams({ state, page: String(p) })));
  refreshTimer = setTimeout(() => { if (route().tab === "approvals" && !$("#decide").open) render(); }, 5000);
}
function a_state(state) { return state === "waiting" ? "Expires" : "State"; }

function approvalWhat(a) {
  const plans = a.plan_label ? [a.plan_label] : a.plans_of_study;
  const main = plans.length ? `plan ${plans.join(", ")}` : (a.study_description || (a.level === "plan" ? "a plan" : "a study"));
  return element("span", {}, main, element("div", { class: "muted" }, [plans.length ? a.study_description : "", dicomDate(a.study_date)].filter(Boolean).join(" · ")));
}
function approvalWords(a) {
  const plans = a.plan_label ? [a.plan_label] : a.plans_of_study;
  return `${plans.length ? "plan " + plans.join(", ") : a.study_description || "the study"} of ${personName(a.patient_name) || a.patient_id}`;
}
// One line per destination: held, or who decided what and when, and what went.
function targetLine(t) {
  const last = t.decisions[t.decisions.length - 1];
  const word = t.held ? "awaiting" : last ? { approve: "approved", reject: "rejected", expired: "expired" }[last.decision] : t.states.join(", ");
  const said = last ? ` by ${last.user} at ${shortTime(last.at)}${last.comment ? ": " + last.comment : ""}` : "";
  const sent = !t.held && last && last.decision === "approve" ? ` (${t.sent} / ${t.instances} sent)` : ` (${t.instances} instance(s))`;
  return element("div", { class: "decision" }, element("strong", {}, t.target), " ", badge(word, word), said, sent);
}

function openDecision(a) {
  const held = a.targets.filter((t) => t.held);
  $("#decide-title").textContent = `Approve or reject: ${approvalWords(a)}`;
  const boxes = held.map((t) => {
    const box = element("input", { type: "checkbox", class: "decide-target", checked: true });
    box.dataset.target = t.target;
    return element("div", {}, element("label", {}, box, ` ${t.target} (${t.instances} instance(s))`));
  });
  $("#decide-body").replaceChildren(
    element("p", {}, `Rule "${a.rule}" holds this ${a.level === "plan" ? "plan" : "study"} of ${personName(a.patient_name) || a.patient_id} (${a.patient_id}) until someone decides. Nothing is sent until you approve.`),
    element("fieldset", {}, element("legend", {}, "Destinations"), ...boxes));
  $("#decide-comment").value = "";
  $("#decide-warning").textContent = "";
  const ticked = () => [...document.querySelectorAll("#decide .decide-target")].filter((b) => b.checked).map((b) => b.dataset.target);
  const decide = async (verb) => {
    const targets = ticked();
    const comment = $("#decide-comment").value.trim();
    if (!targets.length) { $("#decide-warning").textContent = "Tick at least one destination."; return; }
    if (verb === "reject" && comment.length < 3) { $("#decide-warning").textContent = "A rejection says why: write a comment."; $("#decide-comment").focus(); return; }
    try {
      const answer = await call(`approvals/${a.id}/${verb}`, { method: "POST", body: JSON.stringify({ targets, comment, confirm: true }) });
      $("#decide").close();
      clearTimeout(refreshTimer);
      await renderApprovals(route().params);
      // The outcome stays on screen (the list refreshes under it).
      showMessage($("#approvals-message"), `${verb === "approve" ? "Approved" : "Rejected"} by you for ${approvalWords(a)}: ${answer.targets.join(", ")}` + (answer.still_held.length ? `; still held: ${answer.still_held.join(", ")}` : "") + ".", true);
    } catch (error) {
      $("#decide-warning").textContent = "Nothing decided: " + error.message;
    }
  };
  $("#decide-approve").onclick = () => decide("approve");
  $("#decide-reject").onclick = () => decide("reject");
  $("#decide").showModal();
  $("#decide-cancel").focus();
}
document.getElementById("decide-cancel").addEventListener("click", () => document.getElementById("decide").close());
