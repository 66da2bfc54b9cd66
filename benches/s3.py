"""The s3 section of the benchmark harness (issue 16): a store whose packs live in a 3-node
Garage cluster on loopback (replication factor 3, so every byte is written three times on this
one disk) against a local store, on the same series in one run.

  s3   days 0..2 of one disk of the shared workload (4 GiB, --quick 1 GiB) backed up into a
       local store and into a store on the cluster; the newest day restored from each; the
       store's folder deleted and its index rebuilt from the bucket alone; the S3 requests
       each step sent, counted by Garage itself (its /metrics), per GiB backed up.
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from run import disk_series, measure, warm

SIZES = {"full": "4G", "quick": "1G", "smoke": "64M"}


def garage_bin():
    return Path.home() / ".cache" / "cairn" / "garage" / "bin" / "garage"


def start_cluster(shared, work):
    """Starts the shared recipe's cluster; returns (endpoint, key id, secret, workdir)."""
    g = garage_bin()
    if not g.exists():
        raise SystemExit(f"{g} is missing: scripts/setup.sh builds Garage")
    w = work / "garage"
    stop_cluster(w)
    shutil.rmtree(w, ignore_errors=True)
    # Its output to a file: the nodes' shells keep a pipe open after the script ends.
    w.mkdir(parents=True)
    said = w / "cluster.txt"
    with open(said, "w") as f:
        subprocess.run(["bash", str(shared / "peers" / "garage_cluster.sh"), str(g), str(w)], check=True,
                       stdout=f, stderr=subprocess.DEVNULL)
    out = said.read_text()
    endpoint = re.search(r"endpoint (\S+)", out).group(1)
    key_id = re.search(r"Key ID:\s*(\S+)", out).group(1)
    secret = re.search(r"Secret key:\s*(\S+)", out).group(1)
    # The layout takes a moment to reach every node.
    time.sleep(3)
    return endpoint, key_id, secret, w


def stop_cluster(w):
    # By their config's path: the recipe's pid files may name the shell that started a node.
    subprocess.run(["pkill", "-9", "-f", f"{w}/n[0-9]/garage.toml"], check=False)
    time.sleep(0.5)


def s3_requests():
    """S3 API requests the cluster has served so far, over its three nodes (Garage's metrics)."""
    total = 0
    for port in (3913, 3923, 3933):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("api_s3_request_counter"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def garage_cpu():
    """CPU seconds (user + system) the cluster's nodes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in subprocess.run(["pgrep", "-f", "garage.toml server"], capture_output=True, text=True).stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def bucket_bytes(w):
    """Bytes the cluster's data folders hold (three copies, compressed by Garage or not)."""
    total = 0
    for root, _, files in os.walk(w):
        if "/data" in root:
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def curl_all(endpoint, key_id, secret, pairs, parallel, upload):
    """PUTs (upload) or GETs each (file, object) of pairs with curl, `parallel` at a time: the
    cluster's own speed for the same objects, without cairn."""
    script = ('curl -sf --aws-sigv4 aws:amz:garage:s3 --user "$K:$S" '
              "-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "
              + ('-T "$1" "$E/cairn/$2"' if upload else '-o /dev/null "$E/cairn/$2"') + "\n")
    env = {"K": key_id, "S": secret, "E": endpoint}
    tf = Path("/tmp") / f"cairn-bench-curl-{os.getpid()}"
    sf = tf.with_suffix(".sh")
    tf.write_text("".join(f"{f}\n{o}\n" for f, o in pairs))
    sf.write_text(script)
    try:
        return measure(["sh", "-c", f"xargs -d '\\n' -n 2 -P {parallel} sh {sf} < {tf}"], env=env)
    finally:
        tf.unlink()
        sf.unlink()


def run_s3(work, shared, cairn, res, profile):
    size = SIZES[profile]
    d = work / "s3"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    raws = disk_series(work, shared, "replicate", size, 3, 17, 7)
    endpoint, key_id, secret, w = start_cluster(shared, work)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="garage")
    packs = ["--packs", "s3://cairn/bench", "--s3-endpoint", endpoint, "--s3-region", "garage"]
    try:
        local, remote = d / "local", d / "remote"
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(local)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([str(cairn), "init", "--timezone", "UTC", str(remote)] + packs, check=True,
                       stdout=subprocess.DEVNULL, env=env)
        logical = sum(r.stat().st_size for r in raws)
        for name, store in (("local", local), ("s3", remote)):
            secs, cpu, rss, before, g0 = 0.0, 0.0, 0.0, s3_requests(), garage_cpu()
            for day, raw in enumerate(raws):
                warm(raw)
                m = measure([cairn, "backup", "--store", store, "--vm", "vm", "--time",
                             f"2026-11-0{day + 1}T02:00:00Z", f"xvda={raw}"], env=env)
                secs += m["seconds"]
                cpu += m["cpu_seconds"]
                rss = max(rss, m["rss_mib"])
            sent = s3_requests() - before
            res.add(f"s3-backup-series-{name}", "cairn", {"seconds": secs, "cpu_seconds": cpu, "rss_mib": rss}, None,
                    requests=sent, logical_bytes=logical, garage_cpu=garage_cpu() - g0)
        # The cluster's own speed for the same bytes: the local store's packs put with curl, two
        # at a time (as a backup uploads), then read back four at a time.
        pairs = [(p, f"limit/{p.name}") for p in sorted((local / "packs").rglob("*.pack"))]
        g0 = garage_cpu()
        res.add("s3-put-limit", "limit", curl_all(endpoint, key_id, secret, pairs, 2, True),
                sum(p.stat().st_size for p, _ in pairs), garage_cpu=garage_cpu() - g0)
        g0 = garage_cpu()
        res.add("s3-get-limit", "limit", curl_all(endpoint, key_id, secret, pairs, 4, False),
                garage_cpu=garage_cpu() - g0)
        for name, store in (("local", local), ("s3", remote)):
            out = d / f"restored-{name}.raw"
            warm(store)
            before, g0 = s3_requests(), garage_cpu()
            m = measure([cairn, "restore", "--store", store, "vm/xvda@latest", "--format", "raw", out], env=env)
            res.add(f"s3-restore-{name}", "cairn", m, None, requests=s3_requests() - before,
                    garage_cpu=garage_cpu() - g0)
            out.unlink()
        before = s3_requests()
        m = measure([cairn, "verify", "--store", remote], env=env)
        res.add("s3-verify", "cairn", m, None, requests=s3_requests() - before)
        # The oldest day forgotten, then a collection that rewrites every pack it left partly
        # dead: its frames read from the bucket (ahead, into reused buffers) and uploaded again.
        oldest = json.loads(subprocess.run([str(cairn), "list", "--store", str(remote), "--json"], check=True,
                                           capture_output=True, env=env).stdout)[0]["id"]
        subprocess.run([str(cairn), "forget", "--store", str(remote), oldest], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        before = s3_requests()
        m = measure([cairn, "gc", "--store", remote, "--repack-below", "100"], env=env)
        res.add("s3-gc-repack", "cairn", m, None, requests=s3_requests() - before)
        # A new machine: the store's folder gone, its index made from the bucket alone.
        shutil.rmtree(remote)
        before = s3_requests()
        m = measure([cairn, "repair", "--store", remote, "--rebuild-index"] + packs, env=env)
        res.add("s3-rebuild-index", "cairn", m, None, requests=s3_requests() - before)
        res.add("s3-cluster-bytes", "limit", {"seconds": 0.0, "cpu_seconds": 0.0, "rss_mib": 0.0}, bucket_bytes(w))
    finally:
        stop_cluster(w)


def targets(res):
    out = []
    lb, sb = res.get("s3-backup-series-local", "cairn"), res.get("s3-backup-series-s3", "cairn")
    if lb and sb:
        out.append(("backup into Garage / into a local store (speed)", lb["seconds"] / sb["seconds"], ">= 0.7"))
        out.append(("S3 requests per GiB backed up", sb["requests"] / (sb["logical_bytes"] / (1 << 30)), "report"))
    put = res.get("s3-put-limit", "limit")
    if sb and put:
        out.append(("backup into Garage / curl putting its packs (time)", sb["seconds"] / put["seconds"], "report"))
        # Two cores for cairn and three Garage nodes: the CPU both spent, against the wall time.
        out.append(("backup into Garage: (cairn + Garage CPU) / (2 cores x wall)",
                    (sb["cpu_seconds"] + sb["garage_cpu"]) / (2 * sb["seconds"]), "report"))
    lr, sr = res.get("s3-restore-local", "cairn"), res.get("s3-restore-s3", "cairn")
    get = res.get("s3-get-limit", "limit")
    if sr and get:
        out.append(("restore from Garage / curl getting its packs (time)", sr["seconds"] / get["seconds"], "report"))
    if lr and sr:
        out.append(("restore from Garage / from a local store (speed)", lr["seconds"] / sr["seconds"], ">= 0.7"))
        out.append(("restore from Garage: (cairn + Garage CPU) / (2 cores x wall)",
                    (sr["cpu_seconds"] + sr["garage_cpu"]) / (2 * sr["seconds"]), "report"))
        out.append(("restore from Garage, peak RSS (MiB)", sr["rss_mib"], "<= 128"))
    gc = res.get("s3-gc-repack", "cairn")
    if gc:
        out.append(("gc rewriting packs in the bucket, peak RSS (MiB)", gc["rss_mib"], "<= 128"))
    rb = res.get("s3-rebuild-index", "cairn")
    if rb:
        out.append(("index rebuilt from the bucket (seconds)", rb["seconds"], "<= 10"))
    return out
