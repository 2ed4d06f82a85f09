"""Hostile values and a hostile site, in headless Chromium (Debian's) driven by Playwright.

- DICOM values that are markup (<img onerror>, <script>, <svg onload>) in patient name, study
  description, plan label and ROI name: shown as text on the gateway page and in Orthanc
  Explorer's patient and study pages, never run.
- A page on another origin, opened in a browser logged in to the gateway, POSTs to every
  state-changing route the ways a page can (text/plain forms, no-cors fetch, a fetch with a
  custom header): every one is refused and nothing changes.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from html import escape

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.conftest import keep_logs, require_orthanc
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, free_port, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets

MARKUP = {
    "patient": "<img src=x onerror=\"window.__xss='patient'\">^Evil",
    "description": "<svg onload=\"window.__xss='description'\"></svg>",
    "plan": "<img src=y onerror=\"window.__xss='plan'\">",
    "roi": "<script>window.__xss='roi'</script>",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    folder = tmp_path_factory.mktemp("hostile")
    archive = OrthancProcess(folder / "archive", "ARCHIVE")
    gateway = OrthancProcess(folder / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
                             modalities={"ARCHIVE": archive})
    archive.start()
    gateway.start()
    yield {"gateway": gateway, "archive": archive}
    gateway.stop()
    archive.stop()
    keep_logs(gateway, "hostile-gateway")


@pytest.fixture(scope="module")
def stored(servers: dict[str, OrthancProcess], tmp_path_factory: pytest.TempPathFactory) -> dict:
    gateway = servers["gateway"]
    rtset = make_rt_set("XSS-1", patient_name=MARKUP["patient"],
                        study_description=MARKUP["description"], plan_label=MARKUP["plan"],
                        n_slices=3)
    rtset.rtstruct.StructureSetROISequence[0].ROIName = MARKUP["roi"]
    rtset.rtstruct.RTROIObservationsSequence[0].ROIObservationLabel = MARKUP["roi"]
    storescu(write_datasets(rtset.all(), tmp_path_factory.mktemp("xss")), gateway.dicom_port,
             calling="TPS")
    plans = wait_until(lambda: [p for p in gateway.json("/rt-gateway/plans") if p["complete"]],
                       60, "the plan is known and complete")
    study = gateway.post("/tools/lookup", rtset.study_uid).json()[0]["ID"]
    patient = gateway.json(f"/studies/{study}")["ParentPatient"]
    return {"rtset": rtset, "plan": plans[0], "study": study, "patient": patient}


def logged_in(browser: Browser, gateway: OrthancProcess) -> Page:
    """A browser that has logged in to the gateway: it answers the gateway's Basic challenge and
    keeps the credentials for later requests to it, whoever makes them."""
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    page.goto(f"{gateway.url}/rt-gateway/ui/")
    return page


def no_script_ran(page: Page) -> None:
    assert page.evaluate("() => window.__xss === undefined"), page.evaluate("() => window.__xss")


def test_markup_in_dicom_values_is_text_on_the_gateway_page(
    browser: Browser, servers: dict[str, OrthancProcess], stored: dict
) -> None:
    gateway = servers["gateway"]
    page = logged_in(browser, gateway)
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans")
    plan = page.locator("tr.plan").first
    expect(plan).to_contain_text("<img src=y")
    # The patient's name as text: its first component group (DICOM's "=" separates groups).
    expect(plan.locator("td").nth(1)).to_contain_text("<img src")
    # The confirmation names the plan and the patient as text too.
    plan.locator("input.plan-check").check()
    page.locator("input.target-check[value=ARCHIVE]").check()
    page.click("#send")
    expect(page.locator("#confirm")).to_contain_text("<img src=y")
    page.click("#confirm-cancel")
    plan.locator("a.plan-link").click()
    expect(page.locator("#plan-detail")).to_be_visible()
    expect(page.locator("#plan-title")).to_contain_text("<img src=y")
    expect(page.locator("#plan-structures")).to_contain_text("<script>", timeout=60_000)
    expect(page.locator("#dvh-chart")).to_contain_text("<script>", timeout=60_000)
    # A search for markup is a search, not markup.
    page.goto(f"{gateway.url}/rt-gateway/ui/#plans?q=" + "%3Cimg%20src%3Dy")
    expect(page.locator("tr.plan").first).to_contain_text("<img src=y")
    no_script_ran(page)
    page.goto(f"{gateway.url}/rt-gateway/ui/#activity")
    page.wait_for_timeout(500)
    no_script_ran(page)
    assert page.locator("img[src=y], img[src=x]").count() == 0
    answer = page.request.get(f"{gateway.url}/rt-gateway/ui/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.context.close()


@pytest.mark.parametrize("view", ["patient", "study"])
def test_markup_in_dicom_values_is_text_in_orthanc_explorer(
    browser: Browser, servers: dict[str, OrthancProcess], stored: dict, view: str
) -> None:
    gateway = servers["gateway"]
    page = logged_in(browser, gateway)
    page.goto(f"{gateway.url}/app/explorer.html#{view}?uuid={stored[view]}")
    panel = page.locator(f"#{view} .rtgw-panel")
    expect(panel.locator(".rtgw-plans")).to_contain_text("<img src=y", timeout=30_000)
    assert panel.locator("img").count() == 0
    page.wait_for_timeout(500)
    no_script_ran(page)
    page.context.close()


# -- a page on another origin --------------------------------------------------------------------
def attack_bodies(plan_id: str, series_uid: str) -> dict[str, dict]:
    return {
        "plans/send": {"plans": [plan_id], "targets": ["ARCHIVE"]},
        "index/series/delete": {"select": {"series": [series_uid]}},
        "index/series/send": {"select": {"series": [series_uid]}, "targets": ["ARCHIVE"]},
        "index/series/copy": {"select": {"series": [series_uid]}, "folder": "stolen"},
        "index/rebuild": {"scope": "all"},
        "rules/reload": {},
        "rules/test": {"study": "x"},
        "jobs/1/retry": {},
        "harvests": {"source": "ARCHIVE", "query": {"PatientID": "*"}},
        "import/scan": {},
    }


def attack_page(gateway: OrthancProcess, route: str, body: dict) -> str:
    """One route, first as no-cors fetches (text/plain, then a custom header, which needs a
    preflight Orthanc never grants), then as a text/plain form submitted in the top window
    (what a page can send without a preflight; the browser adds its cached credentials)."""
    text = json.dumps(body)
    # text/plain submits "name=value": the name carries the JSON up to a last field.
    name, value = text[:-1] + (', ' if body else '') + '"pad": "', '"}'
    target = f"{gateway.url}/rt-gateway/{route}"
    return f"""<!doctype html><html><body>
    <form method="POST" enctype="text/plain" action="{escape(target)}">
      <input name="{escape(name)}" value="{escape(value)}"></form>
    <script>
      const target = {json.dumps(target)}, body = {json.dumps(text)};
      Promise.all([
        fetch(target, {{method: "POST", mode: "no-cors", credentials: "include",
                        headers: {{"Content-Type": "text/plain"}}, body}}).catch(() => null),
        fetch(target, {{method: "POST", credentials: "include",
                        headers: {{"Content-Type": "application/json", "X-Requested-With": "evil"}},
                        body}}).catch(() => null),
      ]).then(() => document.forms[0].submit());
    </script></body></html>"""


@pytest.fixture
def attacker(servers: dict[str, OrthancProcess], stored: dict) -> Iterator[tuple[str, list[str]]]:
    gateway = servers["gateway"]
    bodies = attack_bodies(stored["plan"]["id"], str(stored["rtset"].ct[0].SeriesInstanceUID))
    pages = {f"/{number}.html": attack_page(gateway, route, body).encode()
             for number, (route, body) in enumerate(bodies.items())}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            html = pages.get(self.path, b"")
            self.send_response(200 if html else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *_: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # "localhost" and "127.0.0.1" are different sites: the gateway is at 127.0.0.1.
    yield f"http://localhost:{port}", sorted(pages)
    server.shutdown()


def test_a_page_on_another_origin_changes_nothing(
    browser: Browser, servers: dict[str, OrthancProcess], stored: dict,
    attacker: tuple[str, list[str]],
) -> None:
    gateway, archive = servers["gateway"], servers["archive"]
    jobs_before = gateway.json("/rt-gateway/jobs")
    instances_before = gateway.instance_count()
    rules_before = gateway.json("/rt-gateway/rules")["sha256"]
    page = logged_in(browser, gateway)
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.url, r.status))
            if "/rt-gateway/" in r.url and r.request.method == "POST" else None)
    origin, paths = attacker
    for path in paths:
        with page.expect_navigation(url=lambda url: url.startswith(gateway.url), timeout=30_000):
            page.goto(origin + path)
    page.wait_for_timeout(500)
    reached = [(url, status) for url, status in answers if status != 401]
    assert len({url for url, _ in reached}) == len(paths), f"not every route was reached: {answers}"
    assert all(status in (403, 415) for _, status in reached), reached
    assert gateway.json("/rt-gateway/jobs") == jobs_before
    assert gateway.instance_count() == instances_before
    assert gateway.json("/rt-gateway/harvests") == []
    assert gateway.json("/rt-gateway/rules")["sha256"] == rules_before
    assert archive.instance_count() == 0
    page.context.close()

    # The same kind of request from the gateway's own page (same origin, with the header) works.
    own = logged_in(browser, gateway)
    status = own.evaluate("""async () => (await fetch("/rt-gateway/rules/reload",
        {method: "POST", headers: {"X-Requested-With": "page"}})).status""")
    assert status == 200
    own.context.close()
