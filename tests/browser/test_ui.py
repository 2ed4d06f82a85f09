"""The gateway page and the Explorer panel in headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.conftest import ARTIFACTS, keep_logs, require_orthanc
from tests.integration.helpers import study_jobs_done
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets

RULES = """
rules:
  - name: Ethos adaptive plans
    on: stable-study
    match: {calling_aet: FOLLOW, plan_label: {contains: ADP}}
    actions:
      - forward: ARCHIVE
  - name: plans for treatment need a physicist
    on: stable-study
    match: {calling_aet: HOLDER}
    actions:
      - hold: {approvers: [rtgw], expires: 2d}
      - forward: ARCHIVE
  - name: structure names in TG-263
    on: instance
    match: {calling_aet: NAMER, modality: RTSTRUCT}
    actions:
      - normalize: tg263
      - forward: ARCHIVE
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    folder = tmp_path_factory.mktemp("browser")
    archive = OrthancProcess(folder / "archive", "ARCHIVE")
    gateway = OrthancProcess(folder / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities={"ARCHIVE": archive})
    archive.start()
    gateway.start()
    yield {"gateway": gateway, "archive": archive}
    gateway.stop()
    archive.stop()
    keep_logs(gateway, "browser-gateway")


@pytest.fixture
def page(browser: Browser, servers: dict[str, OrthancProcess]) -> Iterator[Page]:
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1400, "height": 1000})
    outside: list[str] = []
    gateway_origin = servers["gateway"].url
    context.on("request", lambda r: None if r.url.startswith(gateway_origin) else outside.append(r.url))
    page = context.new_page()
    yield page
    context.close()
    assert outside == [], f"requests left the Orthanc origin: {outside}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def test_rules_page_shows_rules_and_the_error_of_a_broken_reload(
    page: Page, servers: dict[str, OrthancProcess]
) -> None:
    gateway = servers["gateway"]
    page.goto(f"{gateway.url}/rt-gateway/ui/#rules")
    expect(page.locator("#rules-yaml")).to_contain_text("Ethos adaptive plans")
    shot(page, "rules")
    try:
        gateway.rules_path.write_text(RULES.replace("contains: ADP", "contain: ADP"))
        page.click("#reload-rules")
        expect(page.locator("#rules-message")).to_contain_text("unknown operator 'contain'")
        expect(page.locator("#rules-message")).to_contain_text("previous rules stay in force")
        shot(page, "rules-broken")
    finally:
        gateway.rules_path.write_text(RULES)
    page.click("#reload-rules")
    expect(page.locator("#rules-message")).to_contain_text("Reloaded: 3 rule(s)")


def test_rules_test_form_says_why_a_rule_does_not_fire(
    page: Page, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    rtset = make_rt_set("UI-SCHED", plan_label="SCHED1")
    storescu(write_datasets(rtset.all(), tmp_path), gateway.dicom_port, calling="FOLLOW")
    page.goto(f"{gateway.url}/rt-gateway/ui/#rules")
    page.fill("#test-study", rtset.study_uid)
    page.click("#test-form button")
    expect(page.locator("#test-result")).to_contain_text("match.plan_label")
    expect(page.locator("#test-result")).to_contain_text("SCHED1")
    # Condition by condition: the calling AE holds, the plan label fails.
    expect(page.locator("#test-result li.holds").first).to_contain_text(
        "match.calling_aet: holds for")
    expect(page.locator("#test-result li.fails").first).to_contain_text("match.plan_label")
    shot(page, "rules-test")
    # The plan's own page says which rule decided on its study, and why it did not fire.
    plan_id = str(rtset.rtplan.SOPInstanceUID)
    wait_until(lambda: gateway.json_once_there(f"/rt-gateway/plans/{plan_id}",
                                               params={"dvh": "false"})
               .get("decisions"), 60, "the stable-study decision recorded")
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans?plan={plan_id}")
    decisions = page.locator("#plan-decisions")
    expect(decisions).to_contain_text("Ethos adaptive plans")
    expect(decisions).to_contain_text("SCHED1")
    expect(decisions.locator("tbody tr").first).to_contain_text("no")
    shot(page, "plan-decisions")
    page.click("#test-rules-on-study")
    expect(page.locator("#test-study")).to_have_value(rtset.study_uid)
    expect(page.locator("#test-result li.fails").first).to_contain_text("match.plan_label")


def test_activity_page_shows_transfers_and_success_rates(
    page: Page, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway, archive = servers["gateway"], servers["archive"]
    rtset = make_rt_set("UI-ADP", plan_label="ADP1")
    storescu(write_datasets(rtset.all(), tmp_path), gateway.dicom_port, calling="FOLLOW")
    wait_until(lambda: archive.instance_count() >= len(rtset.all()), 60, "study forwarded")
    # The archive answers the last store a moment before the job is settled and its transfer row
    # written; the page reads the stats and the audit once.
    wait_until(lambda: study_jobs_done(gateway, rtset.study_uid), 30, "the study's job done")
    page.goto(f"{gateway.url}/rt-gateway/ui/#activity")
    expect(page.locator("#stats")).to_contain_text("ARCHIVE")
    expect(page.locator("#stats")).to_contain_text("100 %")
    expect(page.locator("#audit")).to_contain_text("UI-ADP")
    # No column of UIDs: the study is shortened, the whole UID a hover or a copy away.
    expect(page.locator("#audit")).not_to_contain_text(rtset.study_uid)
    assert page.locator(f"#audit [title='{rtset.study_uid}']").count() >= 1
    csv_href = page.locator("#audit-csv").get_attribute("href")
    assert csv_href and "format=csv" in csv_href
    # The page's CSV is what the page shows: its columns, its rows, whole UIDs.
    with page.expect_download() as download:
        page.click("#audit-csv-shown")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("Time,Patient,Rule,To,Outcome,Instances")
    assert len(lines) == 1 + page.locator("#audit tbody tr").count()
    assert "UI-ADP" in lines[1] and rtset.study_uid in lines[1]
    shot(page, "activity")


def test_explorer_is_extended_with_the_rt_panel(
    page: Page, servers: dict[str, OrthancProcess]
) -> None:
    gateway = servers["gateway"]
    extension = gateway.get("/plugins/explorer.js").text
    assert "rtgw-panel" in extension
    study_id = gateway.json("/studies")[0]
    page.goto(f"{gateway.url}/app/explorer.html#study?uuid={study_id}")
    panel = page.locator("#study .rtgw-panel")
    expect(panel).to_contain_text("RT plans")
    study = gateway.json(f"/studies/{study_id}")
    href = panel.locator("a.rtgw-open").get_attribute("href") or ""
    assert href.startswith("../rt-gateway/ui/?") and href.endswith("#plans")
    assert f"study={study['MainDicomTags']['StudyInstanceUID']}" in href
    expect(panel.locator(".rtgw-targets")).to_contain_text("ARCHIVE")
    shot(page, "explorer-study")


def test_opened_for_one_study_shows_only_its_plans(
    page: Page, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    """What Orthanc Explorer 2's custom button opens (README, Deploy): the gateway page for one
    study, given its PatientID and StudyInstanceUID."""
    gateway = servers["gateway"]
    one = make_rt_set("UI-FOCUS-1", plan_label="FOCUS1")
    other = make_rt_set("UI-FOCUS-2", plan_label="OTHER2")
    storescu(write_datasets([*one.all(), *other.all()], tmp_path), gateway.dicom_port,
             calling="TPS")
    wait_until(lambda: {p["label"] for p in gateway.json("/rt-gateway/plans")} >= {"FOCUS1", "OTHER2"},
               60, "both plans known")
    page.goto(f"{gateway.url}/rt-gateway/ui/?patient=UI-FOCUS-1&study={one.study_uid}#plans")
    expect(page.locator("tr.plan", has_text="FOCUS1")).to_be_visible()
    assert page.locator("tr.plan", has_text="OTHER2").count() == 0
    shot(page, "plans-one-study")


def test_a_held_plan_is_approved_on_the_page_after_a_deliberate_decision(
    browser: Browser, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway, archive = servers["gateway"], servers["archive"]
    held = make_rt_set("UI-HOLD-1", "Held^Helga", plan_label="CURATIVE")
    storescu(write_datasets(held.all(), tmp_path), gateway.dicom_port, calling="HOLDER")
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(f"{gateway.url}/rt-gateway/ui/#approvals")
        row = page.locator("#approvals-table tr", has_text="UI-HOLD-1")
        expect(row).to_contain_text("Held, Helga", timeout=60_000)
        expect(row).to_contain_text("plans for treatment need a physicist")
        expect(row).to_contain_text("plan CURATIVE")
        expect(row).to_contain_text("awaiting")
        expect(page.locator("#approvals-badge")).to_contain_text("1 waiting")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot(page, "approvals-waiting")
        row.get_by_role("button", name="Decide").click()
        expect(page.locator("#decide")).to_contain_text("Nothing is sent until you approve")
        page.click("#decide-reject")   # a rejection without a reason is not taken
        expect(page.locator("#decide-warning")).to_contain_text("says why")
        assert archive.post("/tools/lookup", held.study_uid).json() == []
        shot(page, "approvals-dialog")
        page.fill("#decide-comment", "checked against the TPS plan report")
        page.click("#decide-approve")
        expect(page.locator("#approvals-message")).to_contain_text("Approved by you")
        wait_until(lambda: (found := archive.post("/tools/lookup", held.study_uid).json()) and
                   len(archive.json(f"/studies/{found[0]['ID']}/instances")) == len(held.all()),
                   60, "the approved plan delivered whole")
        page.goto(f"{gateway.url}/rt-gateway/ui/#approvals?state=decided")
        decided = page.locator("#approvals-table tr", has_text="UI-HOLD-1")
        expect(decided).to_contain_text(f"approved by {USER}")
        expect(decided).to_contain_text("checked against the TPS plan report")
        shot(page, "approvals-decided")
    finally:
        context.close()


def test_the_plan_page_shows_each_structure_name_as_planned_and_as_sent(
    browser: Browser, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    plan = make_rt_set("UI-NAMES-1", "Names^Nadia", plan_label="HN")
    rois = plan.rtstruct.StructureSetROISequence
    rois[0].ROIName, rois[1].ROIName = "Brain Stem", "z_ring"
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="NAMER")
    plan_id = str(plan.rtplan.SOPInstanceUID)
    wait_until(lambda: gateway.get(f"/rt-gateway/plans/{plan_id}").ok and gateway.json(
        f"/rt-gateway/plans/{plan_id}", params={"dvh": "false"})["names_sent"], 60,
        "the names the archive received recorded")
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(f"{gateway.url}/rt-gateway/ui/#plans?plan={plan_id}")
        table = page.locator("#plan-names-sent")
        renamed = table.locator("tr", has_text="Brain Stem")
        expect(renamed).to_contain_text("Brainstem", timeout=30_000)
        expect(renamed).to_contain_text("renamed")
        expect(renamed).to_contain_text("ARCHIVE")
        expect(table.locator("tr", has_text="z_ring")).to_contain_text("helper structure")
        table.scroll_into_view_if_needed()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot(page, "plan-names-sent")
        # The Health tab lists what did not match, for the physicist to extend the table.
        page.goto(f"{gateway.url}/rt-gateway/ui/#health")
        unmapped = page.locator("#unmapped-names tr", has_text="z_ring")
        expect(unmapped).to_contain_text("helper structure", timeout=30_000)
        expect(page.locator("#webhooks")).to_contain_text("No webhook is configured")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot(page, "health-names")
    finally:
        context.close()


def test_health_tab_reviews_the_clean_up_and_deletes_only_after_confirmation(
    page: Page, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    """Runs last in this module: it deletes the module's studies from the gateway's storage."""
    gateway, archive = servers["gateway"], servers["archive"]
    done = make_rt_set("UI-CLEAN-1", "Clean^Cleo", plan_label="ADP7")
    storescu(write_datasets(done.all(), tmp_path), gateway.dicom_port, calling="FOLLOW")
    wait_until(lambda: len(archive.post("/tools/lookup", done.study_uid).json()) == 1 and
               archive.json("/statistics")["CountInstances"] >= len(done.all()), 60,
               "the study delivered to the archive")
    # A study whose job is not settled yet is kept: wait for it, as the archive answers first.
    wait_until(lambda: study_jobs_done(gateway, done.study_uid), 30, "the study's job done")
    page.goto(f"{gateway.url}/rt-gateway/ui/#health")
    expect(page.locator("#cleanup-policy")).to_contain_text("No clean-up policy")
    expect(page.locator("#cleanup-run")).to_be_disabled()
    try:
        # Due at once, but a new policy's first round waits one check_every: the page decides.
        gateway.rules_path.write_text(RULES + "cleanup: {older_than: 1s, quiet_for: 0s, "
                                              "check_every: 1000d}\n")
        assert gateway.post("/rt-gateway/rules/reload").status_code == 200
        page.goto(f"{gateway.url}/rt-gateway/ui/#health")
        page.select_option("#cleanup-verdict", "delete")
        row = page.locator("#cleanup-studies tr", has_text="UI-CLEAN-1")
        expect(row).to_contain_text("would be deleted")
        expect(row).to_contain_text("older than")
        shot(page, "health-cleanup")
        page.click("#cleanup-run")
        expect(page.locator("#confirm")).to_contain_text("UI-CLEAN-1")
        assert gateway.post("/tools/lookup", done.study_uid).json()  # nothing gone before "Delete"
        page.click("#confirm-send")
        expect(page.locator("#cleanup-message")).to_contain_text("Clean-up done: ")
        assert gateway.post("/tools/lookup", done.study_uid).json() == []
        events = gateway.json("/rt-gateway/audit", params={"kind": "events", "patient": "UI-CLEAN-1"})
        assert any(e["event"] == "study-deleted" and USER in e["detail"] for e in events)
    finally:
        gateway.rules_path.write_text(RULES)
        gateway.post("/rt-gateway/rules/reload")
