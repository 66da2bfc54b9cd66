"""The report section of the benchmark harness (issue 17): the report page of a made-up store.

  report   the page of 100 VMs x 1000 points (smoke: 10 x 100), rendered by `report-page`
           from a synthetic report document: seconds to render, the page's size.
"""

import json

from run import log, measure

SIZES = {"full": (100, 1000), "quick": (100, 1000), "smoke": (10, 100)}


def run_report(work, report_page, res, profile):
    vms, points = SIZES[profile]
    out = work / "report-page.html"
    log(f"report page: {vms} VMs x {points} points")
    m = measure([report_page, vms, points, out], stdout=work / "report-page.json")
    info = json.loads((work / "report-page.json").read_text())
    res.add("report-page", "cairn", {"seconds": info["seconds"], "cpu_seconds": m["cpu_seconds"],
                                     "rss_mib": m["rss_mib"]},
            bytes=info["bytes"], note=f"{vms} VMs x {points} points, render only")
    out.unlink()


def targets(res):
    page = res.get("report-page", "cairn")
    if not page:
        return []
    return [
        ("report page of 100 VMs x 1000 points: render (s)", page["seconds"], "<= 2"),
        ("report page of 100 VMs x 1000 points: size (MiB)", page["bytes"] / 2**20, "<= 5"),
    ]
