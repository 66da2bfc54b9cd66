#!/usr/bin/env python3
"""A small HTTPS server for cairn's tests, on 127.0.0.1 only, on ports the kernel picks.

    https_serve.py CERT KEY DIR [--user USER:PASSWORD] [--max-requests N]

Serves two ports and prints them ("MAIN OTHER") on stdout once both listen:
  MAIN  /files/NAME     DIR/NAME with its Content-Length (basic auth when --user is given)
        /redirect/NAME  302 to https://127.0.0.1:OTHER/files/NAME?token=t (as XAPI redirects
                        to the host that sees the storage)
        /drop/NAME      announces the whole file, sends half of it, closes
        /missing        404
        PUT /import_raw_vdi  the body (its Content-Length required) kept as DIR/put-N.vhd,
                        N counting from 1 (as XAPI's import_raw_vdi takes a VHD); when the
                        file DIR/fail-next-put exists, it is removed and the upload dropped
                        halfway (the connection closed, nothing kept)
  OTHER /files/NAME     DIR/NAME, when the query holds token=t
Answers at most --max-requests requests (default 100) on both ports together, then exits; it
also exits when its standard input closes (the test that started it is gone)."""

import argparse
import base64
import http.server
import os
import ssl
import sys
import threading
from urllib.parse import urlsplit, parse_qs

ap = argparse.ArgumentParser()
ap.add_argument("cert")
ap.add_argument("key")
ap.add_argument("dir")
ap.add_argument("--user")
ap.add_argument("--max-requests", type=int, default=100)
a = ap.parse_args()

served = 0
lock = threading.Lock()
done = threading.Event()
ports = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    main = True

    def log_message(self, *args):
        pass

    def file(self, name):
        path = os.path.join(a.dir, os.path.basename(name))
        return path if os.path.isfile(path) else None

    def send_file(self, path, drop=False):
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        limit = size // 2 if drop else size
        with open(path, "rb") as f:
            sent = 0
            while sent < limit:
                b = f.read(min(1 << 20, limit - sent))
                if not b:
                    break
                self.wfile.write(b)
                sent += len(b)
        if drop:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    def count(self):
        global served
        with lock:
            served += 1
            if served >= a.max_requests:
                done.set()

    def authorized(self):
        """False (401 sent) when --user is given and the request lacks it."""
        if not a.user:
            return True
        want = "Basic " + base64.b64encode(a.user.encode()).decode()
        if self.headers.get("Authorization") == want:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="xapi"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_PUT(self):
        self.count()
        u = urlsplit(self.path)
        if not self.main or u.path != "/import_raw_vdi":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.authorized():
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_response(411)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(length)
        flag = os.path.join(a.dir, "fail-next-put")
        fail = os.path.exists(flag)
        if fail:
            os.remove(flag)
        with lock:
            n = 1 + sum(1 for f in os.listdir(a.dir) if f.startswith("put-"))
            out = os.path.join(a.dir, f"put-{n}.vhd")
            part = out + ".part"
            open(part, "wb").close()
        got = 0
        with open(part, "wb") as f:
            while got < length:
                if fail and got >= length // 2:
                    os.remove(part)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                b = self.rfile.read(min(1 << 20, length - got))
                if not b:
                    break
                f.write(b)
                got += len(b)
        if got < length:
            os.remove(part)
            return
        os.rename(part, out)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def do_GET(self):
        self.count()
        u = urlsplit(self.path)
        parts = u.path.strip("/").split("/", 1)
        kind, name = (parts + [""])[:2]
        if self.main and kind == "files" and not self.authorized():
            return
        path = self.file(name) if name else None
        if kind == "files" and path and (self.main or parse_qs(u.query).get("token") == ["t"]):
            return self.send_file(path)
        if self.main and kind == "redirect" and path:
            self.send_response(302)
            self.send_header("Location", f"https://127.0.0.1:{ports['other']}/files/{name}?token=t")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.main and kind == "drop" and path:
            return self.send_file(path, drop=True)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Other(Handler):
    main = False


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(a.cert, a.key)
servers = []
for key, handler in (("main", Handler), ("other", Other)):
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
    s.daemon_threads = True
    ports[key] = s.server_address[1]
    servers.append(s)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print(ports["main"], ports["other"], flush=True)


def stdin_closed():
    sys.stdin.read()
    done.set()


threading.Thread(target=stdin_closed, daemon=True).start()
done.wait()
for s in servers:
    s.shutdown()
