"""The page an RT department works in: a worklist of plans, sending only by a deliberate tick and
a confirmation, a readable plan with its DVH, a live queue with retry, paging at 10,000 plans,
the keyboard, and a laptop screen. Real Orthanc processes, Debian's Chromium through Playwright;
screenshots in tests/artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from pydicom.dataset import Dataset

from tests.integration.conftest import ARTIFACTS, keep_logs, require_orthanc
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.plans_seed import member_uid, seed_plans
from tests.support.rtset import RtSet, make_rt_set, write_datasets

LAPTOP: ViewportSize = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def late() -> Iterator[CountingPeer]:
    """A destination that is down until a test starts it."""
    peer = CountingPeer("LATE")
    peer.stop()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory,
            late: CountingPeer) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    folder = tmp_path_factory.mktemp("worklist")
    archive = OrthancProcess(folder / "archive", "ARCHIVE")
    gateway = OrthancProcess(
        folder / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
        modalities={"ARCHIVE": archive, "LATE": ("LATE", late.port)},
        gateway_settings={"Retry": {"MaxAttempts": 1, "BaseDelaySeconds": 0.2,
                                    "MaxDelaySeconds": 0.5}})
    archive.start()
    gateway.start()
    yield {"gateway": gateway, "archive": archive}
    gateway.stop()
    archive.stop()
    keep_logs(gateway, "worklist-gateway")


def new_page(browser: Browser, gateway: OrthancProcess, viewport: ViewportSize = LAPTOP) -> Page:
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport=viewport, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    ERRORS[id(page)] = errors
    return page


# Script errors and console errors of each page (none is expected).
ERRORS: dict[int, list[str]] = {}


def errors_of(page: Page) -> list[str]:
    return ERRORS.get(id(page), [])


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"worklist-{name}.png"))


def store_plan(gateway: OrthancProcess, folder: Path, patient: str, name: str, label: str,
               *, with_dose: bool = True) -> RtSet:
    rtset = make_rt_set(patient, patient_name=name, plan_label=label, with_dose=with_dose)
    if rtset.rtdose is not None:
        # The planning system's own DVH of the PTV, so computed and TPS values sit side by side.
        item, reference = Dataset(), Dataset()
        reference.ReferencedROINumber = 2
        item.DVHReferencedROISequence = [reference]
        item.DVHType, item.DoseUnits, item.DVHVolumeUnits, item.DVHDoseScaling = (
            "CUMULATIVE", "GY", "CM3", 1.0)
        item.DVHData = [61.8, 1.0]
        item.DVHMinimumDose, item.DVHMeanDose, item.DVHMaximumDose = 61.8, 61.8, 61.8
        rtset.rtdose.DVHSequence = [item]
    storescu(write_datasets(rtset.all(), folder / patient), gateway.dicom_port, calling="TPS")
    wait_until(lambda: [p for p in gateway.json("/rt-gateway/worklist", params={"q": label})["plans"]
                        if p["complete"] == with_dose],
               60, f"plan {label} known")
    return rtset


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_viewing_never_selects_and_send_confirms_each_plan_and_target(
    browser: Browser, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway, archive = servers["gateway"], servers["archive"]
    complete = store_plan(gateway, tmp_path, "WL-1", "Curie^Marie", "WLSEND1")
    store_plan(gateway, tmp_path, "WL-2", "Bohr^Niels", "WLINCOMPLETE", with_dose=False)
    page = new_page(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans")
    row = page.locator("tr.plan", has_text="WLSEND1")
    expect(row).to_contain_text("Curie, Marie")          # a person's name, not CURIE^MARIE
    expect(row).to_contain_text("complete")
    expect(page.locator("tr.plan", has_text="WLINCOMPLETE")).to_contain_text("missing: RTDOSE")
    assert no_horizontal_scroll(page)
    shot(page, "list")

    # Open the plan to read it, come back: nothing is selected.
    row.locator("a.plan-link").click()
    expect(page.locator("#plan-title")).to_contain_text("WLSEND1")
    expect(page.locator("#plan-title")).to_be_in_viewport()
    page.go_back()
    expect(page.locator("tr.plan", has_text="WLSEND1")).to_be_visible()
    assert not page.locator("tr.plan", has_text="WLSEND1").locator("input.plan-check").is_checked()
    expect(page.locator("#send")).to_be_disabled()

    page.locator("tr.plan", has_text="WLSEND1").locator("input.plan-check").check()
    page.locator("tr.plan", has_text="WLINCOMPLETE").locator("input.plan-check").check()
    page.locator("input.target-check[value=ARCHIVE]").check()
    page.click("#send")
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("2 job(s)")
    expect(dialog.locator("tbody tr")).to_have_count(2)
    expect(dialog).to_contain_text("Curie, Marie (WL-1)")
    expect(dialog).to_contain_text("INCOMPLETE: missing RTDOSE")
    # The incomplete plan needs its own tick before Send is possible.
    expect(page.locator("#confirm-send")).to_be_disabled()
    shot(page, "confirm")
    dialog.locator("input.confirm-incomplete").check()
    expect(page.locator("#confirm-send")).to_be_enabled()
    page.click("#confirm-send")
    expect(page.locator("#send-message")).to_contain_text("2 job(s) queued")
    done = page.locator("#send-jobs .job", has_text="WLSEND1")
    expect(done.locator(".badge")).to_have_text("done", timeout=60_000)
    expect(done).to_contain_text(f"{len(complete.all())} / {len(complete.all())} instances")
    wanted = {str(ds.SOPInstanceUID) for ds in complete.all()}
    wait_until(lambda: wanted <= archive.sop_instance_uids(), 30, "plan at the destination")
    # The queue lists it with patient, plan and target; the worklist says where it went.
    page.goto(f"{gateway.url}/rt-gateway/ui/#queue?view=done")
    job = page.locator("#queue-table tr", has_text="WLSEND1")
    expect(job).to_contain_text("Curie, Marie")
    expect(job).to_contain_text("ARCHIVE")
    expect(job).to_contain_text(f"{len(complete.all())} / {len(complete.all())} instances")
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans?q=WLSEND1")
    expect(page.locator("tr.plan", has_text="WLSEND1")).to_contain_text("sent to ARCHIVE")
    shot(page, "sent")
    # Sending it there again is possible, but only with a tick that says so.
    page.locator("tr.plan", has_text="WLSEND1").locator("input.plan-check").check()
    page.locator("input.target-check[value=ARCHIVE]").check()
    page.click("#send")
    expect(page.locator("#confirm")).to_contain_text("ALREADY SENT")
    expect(page.locator("#confirm-send")).to_be_disabled()
    page.locator("#confirm input.confirm-again").check()
    expect(page.locator("#confirm-send")).to_be_enabled()
    shot(page, "confirm-again")
    page.click("#confirm-cancel")
    expect(page.locator("#plans-updated")).to_contain_text("Updated")
    assert errors_of(page) == []


def test_the_api_refuses_an_incomplete_plan_the_page_did_not_confirm(
    servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    store_plan(gateway, tmp_path, "WL-3", "Meitner^Lise", "WLREFUSE", with_dose=False)
    (plan,) = gateway.json("/rt-gateway/worklist", params={"q": "WLREFUSE"})["plans"]
    refused = gateway.post("/rt-gateway/plans/send", {"plans": [plan["id"]], "targets": ["ARCHIVE"],
                                                      "confirm_incomplete": []})
    assert refused.status_code == 409 and "WLREFUSE" in refused.json()["error"]
    assert not [j for j in gateway.json("/rt-gateway/jobs", params={"limit": 500})
                if j["resource_id"] == plan["id"]]


def test_the_api_refuses_sending_again_what_the_page_did_not_confirm(
    servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    store_plan(gateway, tmp_path, "WL-7", "Franklin^Rosalind", "WLTWICE")
    (plan,) = gateway.json("/rt-gateway/worklist", params={"q": "WLTWICE"})["plans"]
    body = {"plans": [plan["id"]], "targets": ["ARCHIVE"], "confirm_incomplete": [],
            "confirm_again": []}
    first = gateway.post("/rt-gateway/plans/send", body)
    assert first.status_code == 200 and first.json()["jobs"][0]["id"]
    again = gateway.post("/rt-gateway/plans/send", body)          # on its way or sent: refused
    assert again.status_code == 409 and "WLTWICE to ARCHIVE" in again.json()["error"]
    confirmed = gateway.post("/rt-gateway/plans/send",
                             {**body, "confirm_again": [f"{plan['id']}:ARCHIVE"]})
    assert confirmed.status_code == 200 and confirmed.json()["jobs"][0]["id"]
    jobs = [j for j in gateway.json("/rt-gateway/jobs", params={"limit": 500})
            if j["resource_id"] == plan["id"]]
    assert len(jobs) == 2


def test_plan_detail_in_words_with_a_dvh_to_read(
    browser: Browser, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    rtset = store_plan(gateway, tmp_path, "WL-4", "Fermi^Enrico", "WLDETAIL")
    plan_id = str(rtset.rtplan.SOPInstanceUID)
    wait_until(lambda: gateway.json_once_there(f"/rt-gateway/plans/{plan_id}",
                                               params={"dvh": "false"})
               .get("metrics", {}).get("beams"), 60, "the plan's beams indexed")
    page = new_page(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans?q=WLDETAIL")
    page.locator("tr.plan", has_text="WLDETAIL").locator("a.plan-link").click()
    expect(page.locator("#plan-title")).to_contain_text("Fermi, Enrico")
    summary = page.locator("#plan-summary")
    expect(summary).to_contain_text("Prescription")
    expect(page.locator("#plan-beams")).to_contain_text("MU")
    expect(page.locator("#plan-files")).to_contain_text("CT")
    expect(page.locator("#plan-files")).to_contain_text(str(len(rtset.ct)))
    structures = page.locator("#plan-structures")
    expect(structures).to_contain_text("PTV", timeout=60_000)
    expect(structures).to_contain_text("TPS 61.80")      # the planning system's value beside ours
    # No 64-character UID shown whole: the plan's own is shortened with a copy button.
    expect(page.locator("#plan-detail")).not_to_contain_text(str(rtset.rtplan.SOPInstanceUID))
    expect(page.locator("#plan-detail .uid button")).to_have_count(1)
    chart = page.locator("#dvh-chart")
    expect(chart.locator("svg")).to_be_visible(timeout=60_000)
    expect(chart.locator("svg path, svg polyline").first).to_be_attached()
    assert no_horizontal_scroll(page)
    # Read it like a DVH: a readout under the cursor, the prescription marked, a legend that
    # hides a structure, the curves as CSV and the chart as PNG.
    chart.locator("svg").hover()
    expect(chart.locator(".dvh-readout")).to_contain_text("At ")
    expect(chart.locator(".dvh-readout")).to_contain_text("PTV")
    expect(chart.locator("svg")).to_contain_text("Rx 60")
    ptv = chart.locator("button.dvh-toggle", has_text="PTV")
    ptv.click()
    expect(ptv).to_have_attribute("aria-pressed", "false")
    chart.locator("svg").focus()
    page.keyboard.press("End")
    expect(chart.locator(".dvh-readout")).not_to_contain_text("PTV")
    ptv.click()
    with page.expect_download() as csv_download:
        chart.get_by_role("button", name="Download the curves of all structures as CSV").click()
    rows = Path(csv_download.value.path()).read_text().splitlines()
    assert rows[0] == "structure,source,dose_gy,volume_pct"
    assert any(row.startswith("PTV,planning system,") for row in rows)
    assert any(row.startswith("PTV,computed,") for row in rows)
    with page.expect_download() as png_download:
        chart.get_by_role("button", name="Download the chart as a PNG image").click()
    assert Path(png_download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot(page, "plan-detail")
    # Selecting from the plan's own page takes its own tick, like the list's.
    expect(page.locator("#selection-summary")).to_contain_text("No plan selected")
    page.check("#detail-select")
    expect(page.locator("#selection-summary")).to_contain_text("1 plan(s) selected")
    page.click("#back-to-list")
    expect(page.locator("tr.plan", has_text="WLDETAIL").locator("input.plan-check")).to_be_checked()
    assert errors_of(page) == []


def test_a_parked_job_is_retried_from_the_queue_and_delivered(
    browser: Browser, servers: dict[str, OrthancProcess], late: CountingPeer, tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    rtset = store_plan(gateway, tmp_path, "WL-5", "Noether^Emmy", "WLRETRY")
    (plan,) = gateway.json("/rt-gateway/worklist", params={"q": "WLRETRY"})["plans"]
    (job,) = gateway.post("/rt-gateway/plans/send",
                          {"plans": [plan["id"]], "targets": ["LATE"]}).json()["jobs"]
    wait_until(lambda: gateway.json(f"/rt-gateway/jobs/{job['id']}")["state"] == "dead", 60,
               "the job parked while LATE is down")
    page = new_page(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#queue?view=parked")
    row = page.locator("#queue-table tr", has_text="WLRETRY")
    expect(row).to_contain_text("parked")
    expect(row).to_contain_text("0 / ")
    expect(page.locator("#tab-link-queue")).to_contain_text("parked")
    shot(page, "queue-parked")
    late.start()
    row.get_by_role("button", name=f"Retry job {job['id']}").click()
    page.goto(f"{gateway.url}/rt-gateway/ui/#queue?view=done")
    done = page.locator("#queue-table tr", has_text="WLRETRY")
    expect(done).to_contain_text(f"{len(rtset.all())} / {len(rtset.all())} instances",
                                 timeout=60_000)
    assert late.distinct() == len(rtset.all())
    events = [e["event"] for e in gateway.json("/rt-gateway/audit", params={"kind": "events"})]
    assert "job-retried-by-hand" in events
    shot(page, "queue-done")


def test_keyboard_only_from_search_to_a_plan_and_send(
    browser: Browser, servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway = servers["gateway"]
    store_plan(gateway, tmp_path, "WL-6", "Hopper^Grace", "WLKEYS")
    page = new_page(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans")
    page.focus("#f-q")
    page.keyboard.type("WLKEYS")
    page.keyboard.press("Enter")
    expect(page.locator("tr.plan")).to_have_count(1)

    def tab_to(selector: str, limit: int = 60) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
                return
        pytest.fail(f"Tab never reached {selector}")

    tab_to("a.plan-link")
    page.keyboard.press("Enter")
    expect(page.locator("#plan-title")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#back-to-list")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("tr.plan", has_text="WLKEYS")).to_be_visible()
    page.focus("#f-q")
    tab_to("input.plan-check")
    page.keyboard.press("Space")
    tab_to("input.target-check[value=ARCHIVE]")
    page.keyboard.press("Space")
    tab_to("#send")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#confirm-send")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#send-message")).to_contain_text("1 job(s) queued")
    # The tabs: arrow keys move between them, Enter opens one.
    page.focus("#tab-link-plans")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-link-queue")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#tab-link-queue")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#tab-queue")).to_be_visible()


def test_ten_thousand_plans_page_search_and_back(
    browser: Browser, tmp_path: Path
) -> None:
    require_orthanc()
    gateway = OrthancProcess(tmp_path / "big", "RTGATEWAY", plugin=True, rules="rules: []\n")
    gateway.start()
    try:
        ids = seed_plans(gateway.gateway_db, 10_000, slices=20)
        first = gateway.get("/rt-gateway/worklist")
        assert first.status_code == 200
        answer = first.json()
        assert answer["total"] == 10_000 and len(answer["plans"]) == 50
        assert answer["plans"][0]["id"] == ids[-1]           # newest first
        assert member_uid(9999, 0) not in first.text and "instance_id" not in first.text
        assert len(first.content) < 100_000

        page = new_page(browser, gateway)
        page.goto(f"{gateway.url}/rt-gateway/ui/#plans")
        expect(page.locator("#plans-status")).to_contain_text("10000 plan(s)")
        expect(page.locator("tr.plan")).to_have_count(25)
        assert no_horizontal_scroll(page)
        shot(page, "10k-first")
        page.click("#plans-pager button:has-text('Next')")
        expect(page.locator("#plans-status")).to_contain_text("page 2 of 400")
        assert "page=2" in page.url
        page.fill("#f-q", "garcia")
        page.press("#f-q", "Enter")
        expect(page.locator("#plans-status")).to_contain_text("1000 plan(s) match")
        rows = page.locator("tr.plan")
        expect(rows.first).to_contain_text("GARCIA")
        page.go_back()
        expect(page.locator("#plans-status")).to_contain_text("page 2 of 400")
        expect(page.locator("#f-q")).to_have_value("")
        page.go_back()
        expect(page.locator("#plans-status")).to_contain_text("page 1 of 400")
        # A deep link restores the same view.
        page.goto(f"{gateway.url}/rt-gateway/ui/#plans?q=garcia&status=not-sent&page=3")
        expect(page.locator("#plans-status")).to_contain_text("page 3 of 40")
        expect(page.locator("#f-q")).to_have_value("garcia")
        shot(page, "10k-search")
    finally:
        gateway.stop()
        keep_logs(gateway, "worklist-10k-gateway")


def test_a_list_that_cannot_load_says_so(
    browser: Browser, servers: dict[str, OrthancProcess]
) -> None:
    gateway = servers["gateway"]
    page = new_page(browser, gateway)
    page.route("**/rt-gateway/worklist*", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"error": "the lead worker is restarting"}'))
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans")
    expect(page.locator("#plans-status")).to_contain_text(
        "The plan list could not be loaded: unavailable: the lead worker is restarting")
    expect(page.locator("#plans-status")).not_to_contain_text("No plans received yet")


def test_health_on_the_page_and_every_view_fits_a_laptop(
    browser: Browser, servers: dict[str, OrthancProcess]
) -> None:
    gateway = servers["gateway"]
    page = new_page(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#health")
    expect(page.locator("#health")).to_contain_text("Worker 0")
    expect(page.locator("#health")).to_contain_text("Free disk")
    expect(page.locator("#destinations")).to_contain_text("ARCHIVE")
    page.locator("#destinations tr", has_text="ARCHIVE").get_by_role("button").click()
    expect(page.locator("#destinations tr", has_text="ARCHIVE")).to_contain_text("answered at")
    page.locator("#destinations tr", has_text="LATE").get_by_role("button").click()
    shot(page, "health")
    for view in ("plans", "queue", "approvals", "activity", "rules", "health"):
        page.goto(f"{gateway.url}/rt-gateway/ui/#{view}")
        expect(page.locator(f"#tab-{view}")).to_be_visible()
        page.wait_for_load_state("networkidle")
        assert no_horizontal_scroll(page), view
        expect(page.locator(f"#tab-link-{view}")).to_have_attribute("aria-selected", "true")
    assert errors_of(page) == []
