"""The serve section of the benchmark harness (issue 14): backups and restores through `cairn
serve` on loopback with TLS against the same work on a local store, in one run.

  serve   day 0 of one disk of the shared workload (1 GiB, --quick 512 MiB) backed up into a
          local store and through a server; day 1 as an incremental (bytes sent against the
          compressed size of its new chunks in the local store); a restore of day 0 through
          the server against a local one; four clients backing up four disks at once against
          one client alone; the server's peak RSS over the section.

Each step is run twice: as the machine runs it (client and server share both cores, which a
local run has alone), and pinned with `taskset` (the server on one core, the clients on the
other, the local runs on that one core too), where a network step and a local one get the same
CPU for the work each side does.
"""

import json
import os
import shutil
import subprocess
import sys

from run import FULL_RUNS, best_of, log, measure, warm

SIZES = {"full": "1G", "quick": "512M", "smoke": "64M"}


class Server:
    """`cairn serve STORE` on 127.0.0.1, a port it picks; tokens made before it starts."""

    def __init__(self, cairn, store, log_file, pin=()):
        self.cairn, self.store = cairn, store
        self.tokens = {}
        for name, role in (("host", "backup"), ("reader", "restore")):
            out = subprocess.run([str(cairn), "token", "create", "--json", "--store", str(store), "--name", name,
                                  "--role", role], check=True, capture_output=True).stdout
            self.tokens[role] = json.loads(out)["secret"]
        self.proc = subprocess.Popen([*pin, str(cairn), "serve", "--json", "--listen", "127.0.0.1:0", str(store)],
                                     stdout=subprocess.PIPE, stderr=open(log_file, "wb"))
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"cairn serve did not start: {log_file.read_text()}")
        info = json.loads(line)
        self.url, self.fingerprint = info["url"], info["fingerprint"]

    def env(self, role):
        return {"CAIRN_STORE": self.url, "CAIRN_TOKEN": self.tokens[role], "CAIRN_FINGERPRINT": self.fingerprint}

    def peak_rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# The pinned runs: the client's core and the server's (both exist on any machine of 2 cores).
CLIENT_CORE, SERVER_CORE = 0, 1


def run_serve(work, shared, cairn, res, profile):
    run_serve_as(work, shared, cairn, res, profile, "")
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        run_serve_as(work, shared, cairn, res, profile, "pinned")
    else:
        log("serve: fewer than 2 cores or no taskset: no pinned runs")


def run_serve_as(work, shared, cairn, res, profile, mode):
    """One pass of the section; `mode` "pinned" runs each side on its own core."""
    size = SIZES[profile]
    client = ["taskset", "-c", str(CLIENT_CORE)] if mode else []
    server_pin = ["taskset", "-c", str(SERVER_CORE)] if mode else []
    key = lambda step: f"serve-{mode}-{step}" if mode else f"serve-{step}"
    d = work / "serve"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raws = {}
    clients = ("c1", "c2", "c3", "c4")
    for name, template, day in (("day0", 1, 0), ("day1", 1, 1), ("solo", 2, 0), ("c1", 3, 0), ("c2", 4, 0),
                                ("c3", 5, 0), ("c4", 6, 0)):
        raw = work / f"serve-{size}-{name}.raw"
        if not raw.exists():
            log(f"generating {raw.name}")
            subprocess.run([sys.executable, shared / "workload" / "gen_disk.py", raw, "--size", size, "--seed",
                            str(40 + template), "--template", str(template), "--day", str(day)], check=True)
        raws[name] = raw
    local, remote = d / "local", d / "remote"
    backup = lambda vm, raw, *extra: [*client, cairn, "backup", "--json", "--vm", vm, *extra, f"xvda={raw}"]

    def new_store(store):
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(store)], check=True, stdout=subprocess.DEVNULL)
        warm(raws["day0"])

    # Day 0 (each run into a new store, the fastest kept) and day 1 into the local store.
    m = best_of(FULL_RUNS, lambda: new_store(local), backup("vm", raws["day0"], "--store", local))
    res.add(key("local-backup"), "cairn", m)
    out = d / "local-day1.json"
    warm(raws["day1"])
    measure(backup("vm", raws["day1"], "--store", local), stdout=out)
    local_new = json.loads(out.read_text())[0]["new_stored_bytes"]

    # Day 0 through a server, each run into a new store behind a new server, the fastest kept;
    # the last server serves the steps after.
    runs, server = [], None
    try:
        for _ in range(FULL_RUNS):
            if server:
                server.stop()
            new_store(remote)
            server = Server(cairn, remote, d / "serve.log", server_pin)
            runs.append(measure(backup("vm", raws["day0"]), env=server.env("backup")))
        m = min(runs, key=lambda r: r["seconds"])
        m["runs_seconds"] = [round(r["seconds"], 3) for r in runs]
        res.add(key("remote-backup"), "cairn", m)
        out = d / "remote-day1.json"
        warm(raws["day1"])
        m = measure(backup("vm", raws["day1"]), stdout=out, env=server.env("backup"))
        sent = json.loads(out.read_text())[0]["bytes_sent"]
        res.add(key("remote-daily"), "cairn", m, sent=sent, new_stored=local_new)

        target = d / "restore.raw"
        point = "vm/xvda@latest~1"

        def fresh():
            target.unlink(missing_ok=True)
            warm(local)

        m = best_of(2, fresh, [*client, cairn, "restore", "--store", local, point, target])
        res.add(key("local-restore"), "cairn", m)

        def fresh_remote():
            target.unlink(missing_ok=True)
            warm(remote)

        m = best_of(2, fresh_remote, [*client, cairn, "restore", point, target], env=server.env("restore"))
        res.add(key("remote-restore"), "cairn", m)
        target.unlink(missing_ok=True)

        # One client alone, then four at once (four VMs, four new disks of one size).
        warm(raws["solo"])
        m = measure(backup("one", raws["solo"]), env=server.env("backup"))
        res.add(key("1-client"), "cairn", m, bytes=os.path.getsize(raws["solo"]))
        warm(*(raws[n] for n in clients))
        pre = " ".join(client)
        script = " & ".join(
            f"{pre} '{cairn}' backup --vm four{i} xvda='{raws[n]}' >/dev/null" for i, n in enumerate(clients)
        ) + " & wait"
        m = measure(["sh", "-c", script], env=server.env("backup"))
        total = sum(os.path.getsize(raws[n]) for n in clients)
        res.add(key("4-clients"), "cairn", m, bytes=total)
        peak = server.peak_rss_mib()
        res.add(key("server"), "helper", {"seconds": 0.0, "cpu_seconds": 0.0, "rss_mib": peak or 0.0})
    finally:
        if server:
            server.stop()


def targets(res):
    out = []
    for mode in ("", "pinned"):
        key = lambda step: f"serve-{mode}-{step}" if mode else f"serve-{step}"
        say = lambda what: f"{what}, pinned" if mode else what
        lb, rb = res.get(key("local-backup"), "cairn"), res.get(key("remote-backup"), "cairn")
        if lb and rb:
            out.append((say("backup through cairn serve / local backup (speed)"), lb["seconds"] / rb["seconds"],
                        ">= 0.95" if mode else "(pinned)"))
        daily = res.get(key("remote-daily"), "cairn")
        if daily and daily.get("new_stored") and not mode:
            out.append(("daily backup sent / its new compressed chunks", daily["sent"] / daily["new_stored"], "<= 1.1"))
        lr, rr = res.get(key("local-restore"), "cairn"), res.get(key("remote-restore"), "cairn")
        if lr and rr:
            out.append((say("restore through cairn serve / local restore (speed)"), lr["seconds"] / rr["seconds"],
                        ">= 0.8" if mode else "(pinned)"))
        one, four = res.get(key("1-client"), "cairn"), res.get(key("4-clients"), "cairn")
        if one and four:
            out.append((say("4 clients at once / 1 client (throughput)"),
                        (four["bytes"] / four["seconds"]) / (one["bytes"] / one["seconds"]), ">= 1.5"))
        srv = res.get(key("server"), "helper")
        if srv:
            out.append((say("server peak RSS with 4 sessions (MiB)"), srv["rss_mib"], "<= 256"))
    return out
