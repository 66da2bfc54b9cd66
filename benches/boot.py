"""The boot section of the benchmark harness (issue 35): what booting a point costs.

  boot    the tests' guest disk (tests/src/boot.rs: SYSLINUX, a Debian cloud kernel, a busybox
          initramfs) through 30 generations (--smoke: 5), each a new initramfs and 2 MiB of new
          data, each backed up, the guest reading its whole 64 MiB disk as it boots; `cairn check-boot` of the newest point (served over NBD from
          the store) against `cairn check-boot --image` of the same image file (the same qemu,
          TCG both, the same verdict), 5 runs each, alternated: the seconds from the VM's start
          to the login prompt (the best and the median), and each command's whole time.
"""

import json
import shutil
import subprocess

from run import log, measure

GENERATIONS = {"full": 30, "quick": 30, "smoke": 5}
RUNS = 5


def boot(cairn, args, out):
    """One check-boot run under GNU time: its measure (the peak RSS is qemu's, a child of
    cairn, with its guest's memory) and the VM's seconds to the verdict."""
    m = measure([cairn, "check-boot", "--json", "--accel", "tcg", "--memory", "256", "--timeout", "5m"] + args,
                stdout=out)
    doc = json.loads(out.read_text())
    if doc.get("booted") is not True:
        raise SystemExit(f"check-boot {args}: did not boot: {doc}")
    m["vm_seconds"] = doc["seconds"]
    return m


def run_boot(work, cairn, guest_disk, res, profile):
    d = work / "boot"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raw = subprocess.run([str(guest_disk), str(d), "guest"], check=True, capture_output=True,
                         text=True).stdout.strip()
    store = d / "store"
    subprocess.run([str(cairn), "init", "--timezone", "UTC", str(store)], check=True, stdout=subprocess.DEVNULL)
    n = GENERATIONS[profile]
    log(f"boot: {n} generations of the guest disk")
    for g in range(1, n + 1):
        if g > 1:
            subprocess.run([str(guest_disk), "--next", str(g), raw], check=True)
        subprocess.run([str(cairn), "backup", "--store", str(store), "--vm", "guest", "--time",
                        f"2026-01-{g:02}T02:00:00Z", f"xvda={raw}"], check=True, stdout=subprocess.DEVNULL)
    point = [f"--store={store}", "guest/xvda@latest"]
    image = ["--image", raw]
    # Alternated, so that neither side always runs first on a warmer machine.
    runs = {"point": [], "image": []}
    out = d / "check.json"
    for _ in range(RUNS):
        runs["point"].append(boot(cairn, point, out))
        runs["image"].append(boot(cairn, image, out))
    for name, tool in (("point", "cairn"), ("image", "limit")):
        best = min(runs[name], key=lambda m: m["vm_seconds"])
        # rss_with_vm: the peak is qemu's (the guest's memory), not cairn's own.
        res.add("boot-check", tool, best, generations=n, rss_with_vm=True,
                runs_vm_seconds=[round(m["vm_seconds"], 2) for m in runs[name]],
                runs_seconds=[round(m["seconds"], 2) for m in runs[name]])


def targets(res):
    """(name, measured, wanted) of this section's targets."""
    p, i = res.get("boot-check", "cairn"), res.get("boot-check", "limit")
    if not (p and i):
        return [("boot of a point 30 generations deep / boot of its raw file (VM start to login)", None, "<= 1.3")]
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return [
        (f"boot of a point {p['generations']} generations deep / boot of its raw file (VM start to login)",
         p["vm_seconds"] / i["vm_seconds"], "<= 1.3"),
        ("the same, medians of the runs", median(p["runs_vm_seconds"]) / median(i["runs_vm_seconds"]), "<= 1.3"),
        ("the same, each command's whole time", p["seconds"] / i["seconds"], "<= 1.3"),
    ]
