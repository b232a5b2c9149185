"""A Hub-compatible HTTP endpoint on 127.0.0.1 with just what create_repo and upload_folder call.

The real `huggingface_hub` client talks to it through HF_ENDPOINT; it stores the files a commit carries so a
test can read what arrived. `fail_with` makes every request answer with that status (401, 500, ...).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hf_test_token_0123456789"


class HubState:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.fail_with: int | None = None


def make_handler(state: HubState, endpoint_ref: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: dict | None = None):
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400:
                self.send_header("X-Error-Message", (body or {}).get("error", "error"))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

        def _authorised(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {TOKEN}"

        def _handle(self, method: str):
            state.requests.append((method, self.path, dict(self.headers)))
            body = self._body() if method == "POST" else b""
            if state.fail_with:
                return self._send(state.fail_with, {"error": f"simulated {state.fail_with}"})
            if not self._authorised():
                return self._send(401, {"error": "Invalid credentials in Authorization header"})
            path = self.path.split("?")[0]
            if method == "GET" and path == "/api/whoami-v2":
                return self._send(200, {"type": "user", "name": "tester", "orgs": [], "auth": {}})
            if method == "POST" and path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req.get('organization') or 'tester'}/{req['name']}"
                private = req.get("visibility") == "private" or bool(req.get("private"))
                state.repos.setdefault(repo_id, {"private": private, "files": {}})
                return self._send(200, {"url": f"{endpoint_ref[0]}/{repo_id}", "name": repo_id})
            if method == "POST" and path == "/api/validate-yaml":  # the model card's metadata check
                return self._send(200, {"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
            if method == "POST" and m and m.group(1) in state.repos:
                repo_id, action = m.group(1), m.group(2)
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        state.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
                return self._send(200, {"commitUrl": f"{endpoint_ref[0]}/{repo_id}/commit/{'0' * 40}",
                                        "commitOid": "0" * 40})
            return self._send(404, {"error": f"not implemented here: {method} {path}"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler


class HubServer:
    def __init__(self):
        self.state = HubState()
        endpoint_ref = [""]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state, endpoint_ref))
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        endpoint_ref[0] = self.endpoint
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
