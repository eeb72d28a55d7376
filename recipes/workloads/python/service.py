"""A serverless-style function using the standard library broadly, for tracing
the slim Python image (recipes/python.yaml slim.workload): files, JSON, an HTTP
server and client on loopback, hashing and HMAC, TLS primitives, compression,
subprocesses, threads. Exits non-zero when anything is wrong."""
import base64
import concurrent.futures
import gzip
import hashlib
import hmac
import http.server
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
import zlib


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps({"sum": sum(body["numbers"]), "sha256": hashlib.sha256(repr(body).encode()).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def serve_and_call():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/", data=json.dumps({"numbers": [1, 2, 3]}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.load(response)
    server.shutdown()
    assert reply["sum"] == 6, reply


def files_and_compression():
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "data.json.gz")
    with gzip.open(path, "wt") as out:
        json.dump({"items": list(range(100))}, out)
    with gzip.open(path, "rt") as back:
        assert json.load(back)["items"][-1] == 99
    assert zlib.decompress(zlib.compress(b"x" * 1000)) == b"x" * 1000
    shutil.rmtree(directory)


def crypto():
    key = secrets.token_bytes(32)
    mac = hmac.new(key, b"message", hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, hmac.new(key, b"message", "sha256").hexdigest())
    assert hashlib.blake2b(b"x").hexdigest() and hashlib.sha3_256(b"x").hexdigest() and hashlib.md5(b"x").hexdigest()
    context = ssl.create_default_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and ssl.OPENSSL_VERSION
    assert base64.b64decode(base64.b64encode(key)) == key


def subprocesses_and_threads():
    done = subprocess.run([sys.executable, "-c", "import sys; print(sys.version_info[0])"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "3"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(lambda n: n * n, range(10))) == 285


serve_and_call()
files_and_compression()
crypto()
subprocesses_and_threads()
print("service workload ok")
