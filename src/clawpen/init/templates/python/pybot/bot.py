"""A small bot: does its work in a loop and answers /healthz on 127.0.0.1:8080."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
state = {"ticks": 0}


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz"
        body = json.dumps({"ok": True, "ticks": state["ticks"]} if ok else {"error": "not found"}).encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def work() -> None:
    path = os.path.join(os.environ.get("HOME", "/tmp"), "ticks.txt")
    while True:
        state["ticks"] += 1
        with open(path, "w") as f:
            f.write(f"{state['ticks']}\n")
        time.sleep(5)


threading.Thread(target=work, daemon=True).start()
print(f"pybot: serving /healthz on 127.0.0.1:8080 (pid {os.getpid()})", flush=True)
ThreadingHTTPServer(("127.0.0.1", 8080), Health).serve_forever()
