"""The fleet section of the benchmark harness (issue 38): what a store of many VMs and points
costs to look at, at 1 000, 10 000 and 100 000 points.

  fleet   stores made by `make-fleet` (50 VMs x 20 points, 500 x 20, 100 x 1000; smoke: 10 x 10,
          50 x 20): list, list --vm, report (text, --json, --html), prune --dry-run with GFS
          rules (the first prune: most points go) and a day's (one point of each VM goes),
          forget of one point, gc with nothing to do, verify --quick, and the live page (`/`
          and `/vm/NAME` through `cairn serve`, the server's peak RSS after each): seconds and
          peak RSS of each, and how each grows from one size to the next.
"""

import json
import shutil
import subprocess
import time

from run import log, measure

SIZES = {
    "full": [(50, 20), (500, 20), (100, 1000)],
    "quick": [(50, 20), (500, 20), (100, 1000)],
    "smoke": [(10, 10), (50, 20)],
}

GFS = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "3"]


def steps(cairn, store, vm, page_file, points):
    """(name, command) of each step that reads the store, in the order run."""
    s = ["--store", str(store)]
    return [
        ("list", [cairn, "list", *s]),
        ("list-vm", [cairn, "list", *s, "--vm", vm]),
        ("report", [cairn, "report", *s]),
        ("report-json", [cairn, "report", *s, "--json"]),
        ("report-html", [cairn, "report", *s, "--html", page_file]),
        ("prune-dry-run", [cairn, "prune", *s, "--dry-run", *GFS]),
        # A day's prune once the rules have been applied: one point of each VM goes.
        ("prune-dry-run-daily", [cairn, "prune", *s, "--dry-run", "--keep-daily", str(points - 1)]),
        ("gc-nothing", [cairn, "gc", *s]),
        ("verify-quick", [cairn, "verify", *s, "--quick"]),
    ]


def live_pages(cairn, store, vm, work):
    """The live page through `cairn serve`: seconds of `/vm/NAME` then `/`, and the server's
    peak RSS after each."""
    token = json.loads(subprocess.run([str(cairn), "token", "create", "--json", "--store", str(store), "--name",
                                       "fleet-admin", "--role", "admin"], check=True,
                                      capture_output=True).stdout)["secret"]
    proc = subprocess.Popen([str(cairn), "serve", "--json", "--listen", "127.0.0.1:0", str(store)],
                            stdout=subprocess.PIPE, stderr=open(work / "fleet-serve.log", "wb"))
    out = {}
    try:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"cairn serve did not start: {(work / 'fleet-serve.log').read_text()}")
        url = json.loads(line)["url"]
        for name, path in (("page-vm", f"/vm/{vm}"), ("page", "/")):
            t0 = time.perf_counter()
            # The server's certificate is its own (self-signed): this measures the page, not TLS.
            r = subprocess.run(["curl", "-sk", "--max-time", "600", "-o", str(work / "fleet-page.html"), "-w",
                                "%{http_code}", "-u", f"x:{token}", url + path], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if r.stdout != "200":
                raise SystemExit(f"{path}: {r.stdout} {r.stderr}")
            rss = None
            for status in open(f"/proc/{proc.pid}/status"):
                if status.startswith("VmHWM:"):
                    rss = int(status.split()[1]) / 1024
            out[name] = ({"seconds": seconds, "cpu_seconds": 0.0, "rss_mib": rss},
                         (work / "fleet-page.html").stat().st_size)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def run_fleet(work, cairn, make_fleet, res, profile):
    for vms, points in SIZES[profile]:
        n = vms * points
        store = work / f"fleet-{n}"
        shutil.rmtree(store, ignore_errors=True)
        log(f"fleet: making {vms} VMs x {points} points")
        made = measure([make_fleet, store, vms, points], stdout=work / "fleet-made.json")
        res.add(f"fleet-{n}-make", "cairn", made, note=f"{vms} VMs x {points} points, make-fleet")
        vm = f"vm-{vms // 2:04d}"
        page_file = work / "fleet-report.html"
        for name, cmd in steps(cairn, store, vm, page_file, points):
            m = measure(cmd, stdout=work / "fleet-out")
            res.add(f"fleet-{n}-{name}", "cairn", m, bytes=(work / "fleet-out").stat().st_size,
                    note=f"{vms} VMs x {points} points")
        res.get(f"fleet-{n}-report-html", "cairn")["bytes"] = page_file.stat().st_size
        for name, (m, size) in live_pages(cairn, store, vm, work).items():
            res.add(f"fleet-{n}-{name}", "cairn", m, bytes=size, note=f"{vms} VMs x {points} points, server RSS")
        # Forget one point of one VM (the last step: it changes the store).
        listed = json.loads(subprocess.run([str(cairn), "list", "--json", "--store", str(store), "--vm", vm],
                                           check=True, capture_output=True).stdout)
        m = measure([cairn, "forget", "--store", store, listed[0]["id"]])
        res.add(f"fleet-{n}-forget", "cairn", m, note=f"{vms} VMs x {points} points")
        shutil.rmtree(store, ignore_errors=True)


STEPS = ["list", "list-vm", "report", "report-json", "report-html", "prune-dry-run", "prune-dry-run-daily", "forget",
         "gc-nothing",
         "verify-quick", "page", "page-vm"]


def targets(res):
    sizes = sorted({int(r["step"].split("-")[1]) for r in res.rows if r["step"].startswith("fleet-")})
    if not sizes:
        return []
    out = []
    big = sizes[-1]
    for step in STEPS:
        m = res.get(f"fleet-{big}-{step}", "cairn")
        if not m:
            continue
        out.append((f"fleet {big} points: {step} (s)", m["seconds"], "<= 1"))
        out.append((f"fleet {big} points: {step} peak RSS (MiB)", m["rss_mib"], "<= 128"))
        if len(sizes) > 1:
            small = res.get(f"fleet-{sizes[-2]}-{step}", "cairn")
            if small and small["seconds"] > 0:
                # Time per point at the larger size over time per point at the smaller: 1 is
                # linear, less is better; a step about one VM should not grow at all.
                per = (m["seconds"] / big) / (small["seconds"] / sizes[-2])
                out.append((f"fleet {sizes[-2]} -> {big} points: {step} time per point, ratio", per, "<= 1"))
    for page in ("page", "report-html"):
        m = res.get(f"fleet-{big}-{page}", "cairn")
        if m and m.get("bytes"):
            out.append((f"fleet {big} points: {page} size (KiB)", m["bytes"] / 1024, "<= 1024"))
    return out
