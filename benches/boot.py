"""The boot section of the benchmark harness (issue 35): what booting a point costs.

  boot    the tests' guest disk (tests/src/boot.rs: SYSLINUX, a Debian cloud kernel, a busybox
          initramfs) through 30 generations (--smoke: 5), each a new initramfs and 2 MiB of new
          data, each backed up; `cairn check-boot` of the newest point (served over NBD from
          the store) against `cairn check-boot --image` of the same image file (the same qemu,
          TCG both, the same verdict), best of 3: the seconds from the VM's start to the login
          prompt, and each command's whole time.
"""

import json
import shutil
import subprocess
import time

from run import log

GENERATIONS = {"full": 30, "quick": 30, "smoke": 5}
RUNS = 3


def boot(cairn, args):
    """One check-boot run: (whole seconds, the VM's seconds to the verdict)."""
    t0 = time.perf_counter()
    p = subprocess.run([str(cairn), "check-boot", "--json", "--accel", "tcg", "--memory", "256",
                        "--timeout", "5m"] + [str(a) for a in args], capture_output=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"check-boot {args} failed ({p.returncode}): {p.stderr.decode(errors='replace')}"
                         f"{p.stdout.decode(errors='replace')}")
    doc = json.loads(p.stdout)
    if doc.get("booted") is not True:
        raise SystemExit(f"check-boot {args}: did not boot: {doc}")
    return wall, doc["seconds"]


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
    for _ in range(RUNS):
        runs["point"].append(boot(cairn, point))
        runs["image"].append(boot(cairn, image))
    for name, tool in (("point", "cairn"), ("image", "limit")):
        wall, vm = min(runs[name], key=lambda r: r[1])
        res.add("boot-check", tool, {"seconds": wall, "cpu_seconds": 0.0, "rss_mib": 0.0},
                vm_seconds=vm, generations=n, runs_vm_seconds=[round(r[1], 2) for r in runs[name]],
                runs_seconds=[round(r[0], 2) for r in runs[name]])


def targets(res):
    """(name, measured, wanted) of this section's targets."""
    p, i = res.get("boot-check", "cairn"), res.get("boot-check", "limit")
    if not (p and i):
        return [("boot of a point 30 generations deep / boot of its raw file (VM start to login)", None, "<= 1.3")]
    return [
        (f"boot of a point {p['generations']} generations deep / boot of its raw file (VM start to login)",
         p["vm_seconds"] / i["vm_seconds"], "<= 1.3"),
        ("the same, each command's whole time", p["seconds"] / i["seconds"], "<= 1.3"),
    ]
