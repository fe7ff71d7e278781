#!/usr/bin/env python3
"""The dashboard in a real headless Chromium against the compose cluster (docker-compose.yml, three containers).

What the operator of `docker compose up` does from the page, checked against the API and Docker itself:
the page shows the 3 members; sign in with the token the cluster made on first start; a file uploaded through the
page reaches "at RF"; a resize through the form is kept across `docker restart` of that member's container (the page
and the API say so once it is back); the dashboard's kill marks the member dead on the page, its container stays
exited with status 0 (compose's `on-failure` does not restart it), and a file it held part of is back at RF on the
page and in the API; the event timeline shows the death and that file's repair; the pooled totals and a file's holders
match the API; a catalog file is removed from the page. Screenshots at 1280x800 and 390x844 go to
target/artifacts/dashboard/compose-*.png.

    .venv/bin/python tests/browser/compose.py [--keep]

Needs Docker, `docker-compose` (or Compose v2's `docker compose`, with XNODE_COMPOSE="docker compose") and the
`xnode:latest` image (`scripts/docker-image.sh`). Publishes the compose file's ports (127.0.0.1:8081-8083), so it
cannot run beside another compose cluster of this repository. Exit status 0 when every check passed, 1 otherwise.
"""

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dashboard import ARTIFACTS, ROOT, Checks, chrome, wait_until  # noqa: E402

SERVICES = ["xnode-1", "xnode-2", "xnode-3"]
PORTS = {"xnode-1": 8081, "xnode-2": 8082, "xnode-3": 8083}


class Cluster:
    def __init__(self, project):
        self.project = project
        self.compose_cmd = shlex.split(os.environ.get("XNODE_COMPOSE", "docker-compose"))

    def compose(self, *args, check=True):
        out = subprocess.run([*self.compose_cmd, "-p", self.project, *args], cwd=ROOT, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(self.compose_cmd)} {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def container(self, service):
        # `ps -q` names the container the same way under Compose 1.29 (project_service_1) and v2 (project-service-1).
        cid = self.compose("ps", "-q", service).strip()
        assert cid, f"no container for {service}"
        return cid

    def inspect(self, service, fmt):
        out = subprocess.run(["docker", "inspect", "-f", fmt, self.container(service)], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    def api(self, service):
        return f"http://127.0.0.1:{PORTS[service]}"

    def get_json(self, service, path, timeout=10):
        with urllib.request.urlopen(self.api(service) + path, timeout=timeout) as r:
            return json.load(r)

    def ready(self, service):
        """`/readyz` of a member; raises with its reason while it is not ready (503 carries one)."""
        try:
            return self.get_json(service, "/readyz", 2)["ready"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{service} not ready: {e.read().decode(errors='replace')}") from None

    def down(self):
        self.compose("down", "-v", "-t", "2", check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromedriver", default=None)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (docker-compose -p ... down -v)")
    args = parser.parse_args()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("compose-*.png"):
        old.unlink()
    cluster = Cluster(f"xnodebrowser{os.getpid()}")
    checks = Checks(set())
    driver = None
    try:
        cluster.compose("up", "-d", "--no-build")
        wait_until("the three members' APIs ready", lambda: all(cluster.ready(s) for s in SERVICES), 90, 1)
        token = subprocess.run(["docker", "exec", cluster.container("xnode-1"), "cat", "/secrets/admin-token"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert token, "the compose cluster made no admin token"

        driver = chrome(args.chromedriver)
        home = cluster.api("xnode-1") + "/"

        def shot(name):
            driver.save_screenshot(str(ARTIFACTS / f"compose-{name}.png"))

        def js(script, *a):
            return driver.execute_script(script, *a)

        def member_state(name):
            return js("const e = document.querySelector(`#members [data-name='${arguments[0]}']`);"
                      "return e ? e.dataset.state : null;", name)

        def file_status(cid):
            return js("const r = document.querySelector(`#files tr[data-root='${arguments[0]}']`);"
                      "return r && r.dataset.status;", cid)

        def at_rf_in_api(service, cid):
            f = next((f for f in cluster.get_json(service, "/api/v1/files") if f["root"] == cid), None)
            h = f and f.get("health")
            return bool(h and h["at_rf"] == h["blocks"] and h["under_replicated"] == 0 and h["missing"] == 0)

        def click(selector):
            # The members card is swapped every 2 s: an element found just before a swap is stale (not clicked).
            def go():
                driver.find_element(By.CSS_SELECTOR, selector).click()
                return True
            wait_until(f"{selector} clicked", go, 10)
            try:
                driver.switch_to.alert.accept()
            except NoAlertPresentException:
                pass

        def signed_in():
            return driver.find_elements(By.ID, "signed-in")

        driver.get(home)

        def three_members():
            wait_until("3 live members on the page", lambda: all(member_state(s) == "alive" for s in SERVICES), 60)
            shot("01-members-1280x800")
        if not checks.run("compose_page_shows_3_members", three_members):
            raise SystemExit(1)

        def sign_in():
            driver.find_element(By.CSS_SELECTOR, "#login input[name=token]").send_keys(token)
            driver.find_element(By.CSS_SELECTOR, "#login button").click()
            wait_until("signed in", signed_in, 10)
        if not checks.run("compose_sign_in_with_the_clusters_token", sign_in):
            raise SystemExit(1)

        payload = ROOT / "target" / "artifacts" / "compose-upload.bin"
        payload.write_bytes(random.Random(15).randbytes(12 * 256 * 1024 + 77))  # 13 leaves at RF 2 of 3
        state = {}

        def upload():
            driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(payload))
            driver.find_element(By.CSS_SELECTOR, "#upload button").click()
            flash = wait_until("the upload message",
                               lambda: (driver.find_element(By.ID, "flash").text or "").startswith("added") and
                               driver.find_element(By.ID, "flash").text, 60)
            state["cid"] = flash.split(" as ")[-1].strip()
            wait_until("the file at RF on the page", lambda: file_status(state["cid"]) == "at-rf", 60)
            assert at_rf_in_api("xnode-1", state["cid"])
            shot("02-uploaded-at-rf")
        if not checks.run("compose_upload_through_the_page_reaches_rf", upload):
            raise SystemExit(1)

        def resize_survives_restart():
            sel = "#members [data-name='xnode-2']"
            bar = lambda: driver.find_element(By.CSS_SELECTOR, f"{sel} .bar")
            want = str(3 << 30)
            driver.find_element(By.CSS_SELECTOR, f"{sel} form.resize input").send_keys("3GiB")
            click(f"{sel} form.resize button")
            wait_until("xnode-2's new capacity on its bar", lambda: bar().get_attribute("data-capacity") == want, 20)
            assert cluster.get_json("xnode-2", "/api/v1/storage")["capacity"] == 3 << 30
            started = cluster.inspect("xnode-2", "{{.State.StartedAt}}")
            out = subprocess.run(["docker", "restart", "-t", "10", cluster.container("xnode-2")], capture_output=True,
                                 text=True)
            assert out.returncode == 0, f"docker restart: {out.stderr}"
            assert cluster.inspect("xnode-2", "{{.State.StartedAt}}") != started, "the container was not restarted"
            wait_until("xnode-2's API back after the restart", lambda: cluster.ready("xnode-2"), 60, 1)
            assert cluster.get_json("xnode-2", "/api/v1/storage")["capacity"] == 3 << 30, "the API lost the resize"
            wait_until("xnode-2 alive on the page with the resized bar",
                       lambda: member_state("xnode-2") == "alive" and bar().get_attribute("data-capacity") == want, 30)
            shot("03-resized-and-restarted")
        checks.run("compose_resize_is_kept_across_docker_restart", resize_survives_restart)

        def kill_from_the_page():
            # A file added through xnode-3 and read by nobody: the other two hold only their shares of it, so its
            # death leaves copies to make. 6 leaves at RF 2 of 3.
            body = random.Random(16).randbytes(6 * 256 * 1024)
            req = urllib.request.Request(f"{cluster.api('xnode-3')}/api/v1/files?name=repair-me.bin", data=body,
                                         method="POST", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=60) as r:
                state["repair_cid"] = json.load(r)["cid"]
            # Every member must have indexed it before the kill: a member that learns of the file only after
            # xnode-3 is dead fetches its share as a plain placement, not a repair, and shows no repair to watch.
            wait_until("repair-me.bin at RF on every member before the kill",
                       lambda: all(at_rf_in_api(s, state["repair_cid"]) for s in SERVICES), 60)
            state["holders_before"] = cluster.get_json("xnode-1", f"/api/v1/files/{state['repair_cid']}/holders")
            click("#members [data-name='xnode-3'] button.kill")
            wait_until("xnode-3 marked dead on the page", lambda: member_state("xnode-3") == "dead", 30)
            wait_until("xnode-3's container exited",
                       lambda: cluster.inspect("xnode-3", "{{.State.Status}}") == "exited", 20)
            assert cluster.inspect("xnode-3", "{{.State.ExitCode}}") == "0", "a kill exits 0"
            time.sleep(5)  # compose's on-failure would have restarted it by now
            assert cluster.inspect("xnode-3", "{{.State.Status}}") == "exited", "the killed member came back by itself"
            assert cluster.inspect("xnode-3", "{{.RestartCount}}") == "0"
            back = driver.find_element(By.CSS_SELECTOR, "#members [data-name='xnode-3'] .how-back").text
            assert "docker start" in back, back
            shot("04-killed")
        if not checks.run("compose_kill_from_the_page_leaves_the_container_down", kill_from_the_page):
            raise SystemExit(1)

        def back_at_rf():
            cid = state["repair_cid"]

            def both_hold_all():
                h = cluster.get_json("xnode-1", f"/api/v1/files/{cid}/holders")
                return at_rf_in_api("xnode-1", cid) and at_rf_in_api("xnode-2", cid) and all(
                    m["blocks"] == h["blocks"] for m in h["members"] if m["name"] in ("xnode-1", "xnode-2"))
            wait_until("repair-me.bin back at RF on xnode-1 and xnode-2 (API)", both_hold_all, 90, 1)
            for c in (cid, state["cid"]):
                wait_until(f"{c[:12]}... at RF on the page", lambda: file_status(c) == "at-rf", 30)
            shot("05-back-at-rf")
        checks.run("compose_files_back_at_rf_after_the_kill", back_at_rf)

        def timeline():
            before = {m["name"]: m["blocks"] for m in state["holders_before"]["members"]}
            repairers = [s for s in ("xnode-1", "xnode-2") if before[s] < state["holders_before"]["blocks"]]
            assert repairers, f"xnode-1 and xnode-2 held every block before the kill ({before}): nothing to repair"
            watcher = repairers[0]
            if watcher != "xnode-1":
                driver.get(cluster.api(watcher) + "/")
            events = lambda: js("return [...document.querySelectorAll('#events li.event')]"
                                ".map(li => [li.dataset.kind, li.textContent])")

            def death_then_repair():
                after = events()[::-1]  # newest first on the page
                died = next((i for i, (k, t) in enumerate(after) if k == "died" and "xnode-3" in t), None)
                if died is None:
                    return False
                kinds = [k for k, t in after[died + 1:] if "repair-me.bin" in t]
                return "repair-started" in kinds and "repair-finished" in kinds[kinds.index("repair-started"):]
            try:
                wait_until(f"the death and the repair in {watcher}'s timeline", death_then_repair, 30)
                texts = [t for _, t in events()]
                assert all(re.search(r"\d\d:\d\d:\d\d UTC", t) for t in texts), texts
                assert any("resized" in t and "xnode-2" in t for t in texts) or watcher != "xnode-1", texts
                shot("06-timeline")
            finally:
                if watcher != "xnode-1":
                    driver.get(home)
                    wait_until("xnode-1's page again", signed_in, 15)
        checks.run("compose_timeline_shows_the_death_and_the_repair", timeline)

        def totals_and_holders():
            totals = lambda: driver.find_element(By.ID, "totals").text
            wait_until("totals with the dead member", lambda: "2 alive" in totals() and "1 dead" in totals(), 20)
            files = cluster.get_json("xnode-1", "/api/v1/files")
            word = "file" if len(files) == 1 else "files"
            assert f"{len(files)} {word}" in totals(), (totals(), len(files))
            row = f"#files tr[data-root='{state['repair_cid']}']"
            driver.find_element(By.CSS_SELECTOR, f"{row} details.holders summary").click()
            wait_until("the holders table", lambda: driver.find_elements(
                By.CSS_SELECTOR, f"{row} table.holders tr[data-member='xnode-1']"), 20)
            api = cluster.get_json("xnode-1", f"/api/v1/files/{state['repair_cid']}/holders")
            for m in api["members"]:
                cell = driver.find_element(By.CSS_SELECTOR, f"{row} table.holders tr[data-member='{m['name']}']").text
                if m["blocks"] is not None:
                    assert f"{m['blocks']} of {api['blocks']}" in cell, (cell, m)
            shot("07-holders")
        checks.run("compose_totals_and_holders_match_the_api", totals_and_holders)

        def remove_file():
            row = f"#files tr[data-root='{state['cid']}']"
            click(f"{row} button.remove")
            wait_until("the file gone from the page", lambda: not driver.find_elements(By.CSS_SELECTOR, row), 20)
            wait_until("the file gone from xnode-2's catalog",
                       lambda: all(f["root"] != state["cid"] for f in cluster.get_json("xnode-2", "/api/v1/files")),
                       20)
        checks.run("compose_remove_a_catalog_file_from_the_page", remove_file)

        def layouts():
            driver.set_window_size(1280, 800)
            time.sleep(0.5)
            shot("08-desktop-1280x800")
            driver.set_window_size(390, 844)
            time.sleep(0.5)
            shot("09-phone-390x844")
            wide = js("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
            assert wide, "horizontal scroll at phone width"
            driver.set_window_size(1280, 800)
        checks.run("compose_screenshots_at_1280x800_and_390x844", layouts)

        def docker_start_brings_it_back():
            subprocess.run(["docker", "start", cluster.container("xnode-3")], check=True, capture_output=True)
            wait_until("xnode-3 alive again on the page", lambda: member_state("xnode-3") == "alive", 60)
        checks.run("compose_docker_start_brings_the_killed_member_back", docker_start_brings_it_back)
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        if checks.results and any(r[1] == "FAILED" for r in checks.results):
            for s in SERVICES:
                logs = subprocess.run([*cluster.compose_cmd, "-p", cluster.project, "logs", "--tail", "40", s],
                                      cwd=ROOT, capture_output=True, text=True).stdout
                print(f"--- last log lines of {s}:\n{logs}", flush=True)
        if args.keep:
            print(f"kept the cluster: {' '.join(cluster.compose_cmd)} -p {cluster.project} down -v")
        else:
            cluster.down()

    failed = [r for r in checks.results if r[1] == "FAILED"]
    passed = sum(1 for r in checks.results if r[1] == "passed")
    print(f"screenshots in {ARTIFACTS} (compose-*.png)")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
