#!/usr/bin/env python3
"""The dashboard in a real headless Chromium against a 3-node cluster (three `xnode run` processes on 127.0.0.1).

Checks, in order: the page shows 3 live members; a file uploaded through the page appears in the files list and
reaches "at RF" (every block on as many members as the replication factor); the transfer log shows the upload's blocks
going to their holders and blocks moving when a member that lacks some reads the file; a resize through the form changes that member's storage bar; a kill through another
member's button marks it dead (exit 0, with how to bring it back); the pooled totals and a file's holders match
the API; the event timeline shows the death and the resize; a file added through the killed member is back at RF
(the API and the page) and the timeline of a member that had copies to make shows its repair start and finish; a
catalog file is removed from the page; the favicon;
nothing scrolls sideways or is clipped at 1280x800 nor at phone width (390x844).
Screenshots go to target/artifacts/dashboard/.

    .venv/bin/python tests/browser/dashboard.py [--binary target/release/xnode] [--keep]

Exit status: 0 when every check passed, 1 otherwise. While a capability is being built, its check can be listed in
XNODE_BROWSER_PENDING (comma-separated names) to report it as pending instead of failed; nothing is pending by
default, and CI sets nothing.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "target" / "artifacts" / "dashboard"
TOKEN = "browser-test-token"
NAMES = ["alpha", "beta", "gamma"]


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, workdir, name, seeds):
        self.name = name
        self.api_port = free_port()
        self.gossip_port = free_port(socket.SOCK_DGRAM)
        self.api = f"http://127.0.0.1:{self.api_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XNODE_")}
        env.update(
            XNODE_NAME=name,
            XNODE_BIND_ADDR="127.0.0.1",
            XNODE_API_PORT=str(self.api_port),
            XNODE_GOSSIP_PORT=str(self.gossip_port),
            XNODE_P2P_PORT="0",
            XNODE_KNOWN_PEERS=",".join(seeds),
            XNODE_ADMIN_TOKEN=TOKEN,
            XNODE_STORAGE_MAX="64MiB",
            XNODE_LOG="info",
        )
        self.log = open(workdir / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "--data-dir", str(workdir / name), "run"], env=env, stdout=self.log, stderr=self.log
        )

    def get_json(self, path, timeout=10):
        with urllib.request.urlopen(self.api + path, timeout=timeout) as r:
            return json.load(r)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wait_until(what, check, timeout=30.0, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the page may be mid-swap; try again
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def chrome(chromedriver=None):
    """Headless Chromium at 1280x800 through chromedriver (Debian's `chromium` and `chromium-driver`)."""
    opts = webdriver.ChromeOptions()
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1280,800"]:
        opts.add_argument(flag)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        opts.binary_location = binary
    chromedriver = chromedriver or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.set_window_size(1280, 800)
    driver.implicitly_wait(0)
    return driver


class Checks:
    def __init__(self, pending):
        self.results = []
        self.pending = pending

    def run(self, name, fn):
        started = time.monotonic()
        try:
            fn()
            self.results.append((name, "passed", ""))
            print(f"  ok       {name} ({time.monotonic() - started:.1f}s)", flush=True)
            return True
        except Exception as e:
            status = "pending" if name in self.pending else "FAILED"
            e = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.results.append((name, status, e))
            print(f"  {status:<8} {name}: {e}", flush=True)
            return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "xnode"))
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data and logs")
    args = parser.parse_args()
    pending = set(filter(None, os.environ.get("XNODE_BROWSER_PENDING", "").split(",")))
    if pending and os.environ.get("CI") == "true":
        sys.exit(f"error: XNODE_BROWSER_PENDING is not allowed in CI (got {sorted(pending)}); every check must pass")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("[0-9]*.png"):
        old.unlink()
    workdir = Path(tempfile.mkdtemp(prefix="xnode-browser-"))
    nodes = []
    driver = None
    checks = Checks(pending)
    try:
        first = Node(args.binary, workdir, NAMES[0], [])
        nodes.append(first)
        for name in NAMES[1:]:
            nodes.append(Node(args.binary, workdir, name, [f"127.0.0.1:{first.gossip_port}"]))
        alpha, beta, gamma = nodes
        wait_until("the nodes' APIs", lambda: all(n.get_json("/readyz", 2)["ready"] for n in nodes), 30)

        driver = chrome(args.chromedriver)

        def shot(name):
            driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

        def js(script, *a):
            return driver.execute_script(script, *a)

        def member_state(name):
            return js("const e = document.querySelector(`#members [data-name='${arguments[0]}']`);"
                      "return e ? e.dataset.state : null;", name)

        def no_horizontal_scroll():
            return js("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")

        driver.get(alpha.api + "/")

        def three_members():
            wait_until("3 live members on the page",
                       lambda: all(member_state(n) == "alive" for n in NAMES), 30)
            version = driver.find_element(By.ID, "htmx-version").text
            assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"htmx version shown: {version!r}"
            shot("01-members-1280x800")
        if not checks.run("page_shows_3_members", three_members):
            raise SystemExit(1)

        def sign_in():
            driver.find_element(By.CSS_SELECTOR, "#login input[name=token]").send_keys(TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#login button").click()
            wait_until("signed in", lambda: driver.find_elements(By.ID, "signed-in"), 10)
            cookie = driver.get_cookie("xnode_session")
            assert cookie and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", cookie
            assert TOKEN not in cookie.get("value", ""), "the cookie holds a session id, not the token"
        checks.run("sign_in_opens_a_session_in_an_httponly_cookie", sign_in)

        payload = workdir / "upload-me.bin"
        payload.write_bytes(random.Random(6).randbytes(12 * 256 * 1024 + 1234))  # 13 leaves: at RF 2 of 3, members miss some
        state = {}

        def upload():
            driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(payload))
            driver.find_element(By.CSS_SELECTOR, "#upload button").click()
            flash = wait_until("the upload message",
                               lambda: (driver.find_element(By.ID, "flash").text or "").startswith("added") and
                               driver.find_element(By.ID, "flash").text, 30)
            state["cid"] = flash.split(" as ")[-1].strip()
            wait_until("the file in the files list",
                       lambda: driver.find_elements(By.CSS_SELECTOR, f"#files tr[data-root='{state['cid']}']"), 10)
            shot("02-uploaded")
        if not checks.run("upload_through_the_page_appears_in_files", upload):
            raise SystemExit(1)

        def at_rf():
            sel = f"#files tr[data-root='{state['cid']}']"
            status = lambda: js("const r = document.querySelector(arguments[0]); return r && r.dataset.status;", sel)
            wait_until("the file at RF (all its blocks on as many members as the replication factor)",
                       lambda: status() == "at-rf", 30)
            shot("03-at-rf")
        checks.run("replicated_at_rf", at_rf)

        def transfers():
            pairs = lambda: js("return [...document.querySelectorAll('#transfers li.transfer')]"
                               ".map(li => li.querySelector('.from').textContent + '>' + li.querySelector('.to').textContent)")
            holders = alpha.get_json(f"/api/v1/files/{state['cid']}/holders")
            held = {m["name"]: m["blocks"] for m in holders["members"]}
            # The upload: alpha sent beta and gamma their blocks of the file, which their receipts show on alpha's page.
            receivers = [n for n in ("beta", "gamma") if held[n]]
            wait_until(f"the upload's blocks to {receivers} in the log",
                       lambda: all(f"alpha>{n}" in pairs() for n in receivers), 20)
            # One line per burst, with its blocks, bytes and time zone.
            line = driver.find_element(By.CSS_SELECTOR, "#transfers li.transfer").text
            assert re.search(r"\d+ blocks?", line) and "UTC" in line, line
            time.sleep(3)  # every burst of the upload is over and shown
            # Reads: a member missing blocks of the file fetches them from the others, live on alpha's page.
            readers = [n for n in ("beta", "gamma") if held[n] < holders["blocks"]]
            assert readers, f"beta and gamma hold every block ({held} of {holders['blocks']}): nothing to fetch"
            for node in (n for n in nodes if n.name in readers):
                before = sum(p.endswith(f">{node.name}") for p in pairs())
                with urllib.request.urlopen(f"{node.api}/api/v1/files/{state['cid']}?timeout=30", timeout=60) as r:
                    assert r.read() == payload.read_bytes(), f"{node.name} read different bytes"
                wait_until(f"blocks received by {node.name} in alpha's log",
                           lambda: sum(p.endswith(f">{node.name}") for p in pairs()) > before, 20)
            shot("04-transfers")
        checks.run("transfer_log_shows_blocks_moving", transfers)

        def resize():
            bar = lambda: driver.find_element(By.CSS_SELECTOR, "#members [data-name='beta'] .bar")
            wait_until("beta's bar to show what it holds", lambda: int(bar().get_attribute("data-used")) > 0, 15)
            before = bar().find_element(By.CSS_SELECTOR, ".fill").get_attribute("style")
            field = driver.find_element(By.CSS_SELECTOR, "#members [data-name='beta'] form.resize input")
            field.send_keys("4MiB")
            driver.find_element(By.CSS_SELECTOR, "#members [data-name='beta'] form.resize button").click()
            wait_until("beta's new capacity on its bar",
                       lambda: bar().get_attribute("data-capacity") == str(4 << 20), 15)
            after = bar().find_element(By.CSS_SELECTOR, ".fill").get_attribute("style")
            assert before != after, f"bar unchanged: {before} -> {after}"
            assert beta.get_json("/api/v1/storage")["capacity"] == 4 << 20
            shot("05-resized")
        checks.run("resize_changes_the_storage_bar", resize)

        def at_rf_in_api(cid, node=None):
            f = next((f for f in (node or alpha).get_json("/api/v1/files") if f["root"] == cid), None)
            h = f and f.get("health")
            return bool(h and h["at_rf"] == h["blocks"] and h["under_replicated"] == 0 and h["missing"] == 0)

        def kill():
            # A file added through gamma and read by nobody, so alpha and beta hold only their shares of it (the
            # first file was read everywhere and is cached whole on every member): what gamma takes with it when it
            # dies is what the API's holders say alpha and beta lack. 3 leaves: beta's 4 MiB still fit both files.
            body = random.Random(7).randbytes(3 * 256 * 1024)
            req = urllib.request.Request(f"{gamma.api}/api/v1/files?name=repair-me.bin", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                state["repair_cid"] = json.load(r)["cid"]
            # Every member must have indexed it before the kill: one that learns of it only after gamma is dead
            # fetches its share as a plain placement, not a repair, and shows no repair to watch.
            wait_until("repair-me.bin at RF on every member before the kill",
                       lambda: all(at_rf_in_api(state["repair_cid"], n) for n in nodes), 30)
            state["repair_holders"] = alpha.get_json(f"/api/v1/files/{state['repair_cid']}/holders")

            def click_kill():
                # The members card is swapped every 2 s: a button found just before a swap is stale (not clicked).
                driver.find_element(By.CSS_SELECTOR, "#members [data-name='gamma'] button.kill").click()
                return True
            wait_until("gamma's kill button clicked", click_kill, 10)
            try:
                driver.switch_to.alert.accept()
            except NoAlertPresentException:
                pass
            wait_until("gamma marked dead", lambda: member_state("gamma") == "dead", 20)
            card = driver.find_element(By.CSS_SELECTOR, "#members [data-name='gamma'] .last-seen").text
            assert card.startswith("last reported"), f"a dead member's card should say what it last reported: {card!r}"
            back = driver.find_element(By.CSS_SELECTOR, "#members [data-name='gamma'] .how-back").text
            assert "docker start" in back and "xnode run" in back, f"the card says how to bring it back: {back!r}"
            # Status 0: a supervisor restarting on failure (compose's on-failure) leaves it down.
            assert gamma.proc.wait(5) == 0, "a kill exits 0 without leaving"
            shot("06-killed")
        checks.run("kill_marks_that_member_dead", kill)

        def totals_and_holders():
            totals = lambda: driver.find_element(By.ID, "totals").text
            wait_until("totals with the dead member", lambda: "2 alive" in totals() and "1 dead" in totals(), 20)
            files = alpha.get_json("/api/v1/files")
            assert f"{len(files)} files" in totals(), (totals(), len(files))
            assert "replication factor 2" in totals(), totals()
            row = f"#files tr[data-root='{state['cid']}']"
            driver.find_element(By.CSS_SELECTOR, f"{row} details.holders summary").click()
            wait_until("the holders table",
                       lambda: driver.find_elements(By.CSS_SELECTOR, f"{row} table.holders tr[data-member='alpha']"), 20)
            api = alpha.get_json(f"/api/v1/files/{state['cid']}/holders")
            for m in api["members"]:
                cell = driver.find_element(By.CSS_SELECTOR, f"{row} table.holders tr[data-member='{m['name']}']").text
                if m["blocks"] is not None:
                    assert f"{m['blocks']} of {api['blocks']}" in cell, (cell, m)
            shot("07-holders")
        checks.run("pooled_totals_and_per_file_holders_match_the_api", totals_and_holders)

        def timeline():
            kinds = lambda: js("return [...document.querySelectorAll('#events li.event')].map(li => li.dataset.kind)")
            texts = lambda: js("return [...document.querySelectorAll('#events li.event')].map(li => li.textContent)")
            wait_until("the death in the timeline", lambda: "died" in kinds(), 20)
            assert any("gamma died" in t for t in texts()), texts()
            assert any("resized" in t and "beta" in t for t in texts()), texts()
            assert all(re.search(r"\d\d:\d\d:\d\d UTC", t) for t in texts()), texts()
            shot("08-timeline")
        checks.run("event_timeline_shows_the_death_and_the_resize", timeline)

        def repair():
            cid, before = state["repair_cid"], state["repair_holders"]
            # With gamma dead and RF 2, alpha and beta must each hold every block: a member that held fewer before
            # the kill (the API's holders) has copies to make, so its own timeline must show the repair.
            held = {m["name"]: m["blocks"] for m in before["members"]}
            repairers = [n for n in ("alpha", "beta") if held[n] < before["blocks"]]

            def both_hold_all():
                h = alpha.get_json(f"/api/v1/files/{cid}/holders")
                return at_rf_in_api(cid) and all(
                    m["blocks"] == h["blocks"] for m in h["members"] if m["name"] in ("alpha", "beta"))
            wait_until("repair-me.bin back at RF on alpha and beta (API)", both_hold_all, 60)
            row = f"#files tr[data-root='{cid}']"
            wait_until("repair-me.bin shown at RF again", lambda: js(
                "const r = document.querySelector(arguments[0]); return r && r.dataset.status;", row) == "at-rf", 20)
            if not repairers:
                print(f"  note: alpha and beta held every block of repair-me.bin before the kill ({held}); "
                      "no copy to make, no repair to show", flush=True)
                return
            watcher = next(n for n in nodes if n.name == repairers[0])
            if watcher is not alpha:
                driver.get(watcher.api + "/")
            events = lambda: js("return [...document.querySelectorAll('#events li.event')]"
                                ".map(li => [li.dataset.kind, li.textContent])")

            def started_then_finished():
                # After gamma's death: the repair is the one it caused, not anything before it.
                after = events()[::-1]  # the page lists the newest first
                died = next((i for i, (k, t) in enumerate(after) if k == "died" and "gamma" in t), None)
                if died is None:
                    return False
                seen = [(k, t) for k, t in after[died + 1:]
                        if "repair-me.bin" in t and k in ("repair-started", "repair-finished")]
                kinds = [k for k, _ in seen]
                return ("repair-started" in kinds and "repair-finished" in kinds[kinds.index("repair-started"):]
                        and seen)
            try:
                seen = wait_until(f"the repair started and finished in {watcher.name}'s timeline",
                                  started_then_finished, 20)
                started = next(t for k, t in seen if k == "repair-started")
                assert re.search(r"started: \d+ blocks below the replication factor", started), started
                # The files table (polled every 3 s) agrees with the timeline: the repaired file shows at RF.
                wait_until("repair-me.bin at RF in the files table", lambda: js(
                    "return [...document.querySelectorAll('#files tr[data-status]')]"
                    ".some(tr => tr.textContent.includes('repair-me.bin') && tr.dataset.status === 'at-rf')"), 15)
                shot("09-repaired")
            finally:
                if watcher is not alpha:
                    driver.get(alpha.api + "/")
                    wait_until("alpha's page again", lambda: driver.find_elements(By.ID, "signed-in"), 15)
        checks.run("repair_after_the_kill_is_back_at_rf_and_in_the_timeline", repair)

        def remove_file():
            row = f"#files tr[data-root='{state['cid']}']"
            driver.find_element(By.CSS_SELECTOR, f"{row} button.remove").click()
            try:
                driver.switch_to.alert.accept()
            except NoAlertPresentException:
                pass
            wait_until("the file gone from the page", lambda: not driver.find_elements(By.CSS_SELECTOR, row), 20)
            assert all(f["root"] != state["cid"] for f in beta.get_json("/api/v1/files")), "beta still lists it"
            wait_until("the removal in the timeline", lambda: any("removed" in t for t in
                       js("return [...document.querySelectorAll('#events li.event')].map(li => li.textContent)")), 10)
        checks.run("remove_a_catalog_file_from_the_page", remove_file)

        def favicon():
            with urllib.request.urlopen(f"{alpha.api}/favicon.ico", timeout=10) as r:
                assert r.headers["Content-Type"].startswith("image/svg+xml"), r.headers["Content-Type"]
            assert driver.find_elements(By.CSS_SELECTOR, "link[rel=icon]")
        checks.run("favicon", favicon)

        def clipped():
            # Elements whose content is wider than their box (cut off) or that reach past the viewport.
            return js("const w = document.documentElement.clientWidth; return [...document.querySelectorAll("
                      "'body *')].filter(e => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);"
                      " if (r.width === 0 || s.display === 'none' || e.closest('.scroll')) return false;"
                      " return r.right > w + 1 || (s.overflowX === 'hidden' && e.scrollWidth > e.clientWidth + 1"
                      " && !e.classList.contains('bar')); }).map(e => e.tagName + '.' + e.className).slice(0, 10)")

        def too_wide():
            # Elements whose content (text included) runs past the viewport.
            return js("const w = document.documentElement.clientWidth; return [...document.querySelectorAll("
                      "'body *')].filter(e => !e.closest('.scroll') && e.getBoundingClientRect().left + e.scrollWidth"
                      " > w + 1).map(e => e.tagName + '.' + e.className).slice(0, 10)")

        def layouts():
            assert no_horizontal_scroll(), "horizontal scroll at 1280x800"
            assert not clipped(), f"clipped at 1280x800: {clipped()}"
            shot("10-desktop-1280x800")
            driver.set_window_size(390, 844)
            time.sleep(0.5)
            shot("11-phone-390x844")
            assert no_horizontal_scroll(), f"horizontal scroll at phone width; too wide: {too_wide()}"
            assert not clipped(), f"clipped at 390 px: {clipped()}"
            driver.set_window_size(1280, 800)
        checks.run("usable_at_1280x800_and_phone_width", layouts)
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        for n in nodes:
            n.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    failed = [r for r in checks.results if r[1] == "FAILED"]
    passed = sum(1 for r in checks.results if r[1] == "passed")
    for name, status, why in checks.results:
        if status == "pending":
            print(f"pending: {name} (listed in XNODE_BROWSER_PENDING): {why}")
    print(f"screenshots in {ARTIFACTS}")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
