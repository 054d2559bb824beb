"""A local stand-in for the Hugging Face Hub's HTTP API that records every call huggingface_hub
makes, for tests that must never talk to the real Hub (point HF_ENDPOINT at it).

It implements just what a dataset publish uses: repo creation and settings, branches, tags, the
file tree, file downloads (HEAD + GET), README validation, the preupload check (every file
"regular", so contents travel inside the commit) and the NDJSON commit endpoint, which it applies
to an in-memory repo.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    path: str
    authorization: str | None
    body: Any = None


@dataclass
class HubRecorder:
    calls: list[Call] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # the repo's main branch
    commits: list[dict[str, Any]] = field(default_factory=list)
    fail_next_commit: str | None = None  # an error body to answer the next commit with (HTTP 400)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubRecorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(
                self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
            ) -> None:
                data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _record(self, body: Any = None) -> None:
                recorder.calls.append(Call(self.command, self.path, self.headers.get("Authorization"), body))

            def do_HEAD(self) -> None:
                self._record()
                self._resolve()

            def do_GET(self) -> None:
                self._record()
                path = self.path.split("?")[0]
                tree = re.match(r"^/api/datasets/[^/]+/[^/]+/tree/[^/]+/?(.*)$", path)
                if tree:
                    return self._send(200, recorder.tree(tree.group(1), "recursive=true" in self.path))
                info = re.match(r"^/api/datasets/([^/]+/[^/]+)(/revision/.*)?$", path)
                if info:
                    siblings = [{"rfilename": p, "size": len(b)} for p, b in sorted(recorder.files.items())]
                    return self._send(200, {"id": info.group(1), "sha": recorder.head(), "siblings": siblings})
                return self._resolve()

            def _resolve(self) -> None:
                m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if not m:
                    return self._send(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})
                content = recorder.files.get(m.group(3))
                if content is None:
                    return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                etag = hashlib.sha1(content).hexdigest()
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": recorder.head()}
                return self._send(200, headers=headers, raw=content)

            def do_PUT(self) -> None:
                self._record(json.loads(self._body() or b"{}"))
                self._send(200, {})

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                raw = self._body()
                commit = re.match(r"^/api/datasets/([^/]+/[^/]+)/commit/", path)
                if commit:
                    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
                    self._record(lines)
                    if recorder.fail_next_commit is not None:
                        error, recorder.fail_next_commit = recorder.fail_next_commit, None
                        return self._send(400, {"error": error})
                    return self._send(200, recorder.apply(commit.group(1), lines))
                body = json.loads(raw) if raw else None
                self._record(body)
                if path == "/api/repos/create":
                    return self._send(
                        200, {"url": f"{recorder.url}/datasets/{body['organization'] or ''}/{body['name']}"}
                    )
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
                    return self._send(200, {"files": files, "commitOid": recorder.head()})
                return self._send(200, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def apply(self, repo_id: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        header = next(x["value"] for x in lines if x["key"] == "header")
        added, deleted = [], []
        for item in lines:
            if item["key"] == "file":
                value = item["value"]
                self.files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif item["key"] == "deletedFile":
                self.files.pop(item["value"]["path"], None)
                deleted.append(item["value"]["path"])
        oid = hashlib.sha1(json.dumps([header, added, deleted, len(self.commits)]).encode()).hexdigest()
        self.commits.append({"oid": oid, "summary": header.get("summary"), "added": added, "deleted": deleted})
        return {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def tree(self, folder: str, recursive: bool) -> list[dict[str, Any]]:
        """The Hub's tree listing of ``folder``: files, and (non-recursive) the folders directly in it."""
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for p, b in sorted(self.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest and not recursive:
                d = prefix + rest.split("/", 1)[0]
                entries[d] = {"type": "directory", "path": d, "oid": "0" * 40, "size": 0}
                continue
            entries[p] = {"type": "file", "path": p, "oid": hashlib.sha1(b).hexdigest(), "size": len(b)}
        return list(entries.values())

    def calls_to(self, fragment: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if fragment in c.path and (method is None or c.method == method)]
