"""The CLI's path to a running service: the same operations as the App, over the API's local socket."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from kb.errors import KbError

API = "/api/v1"


class ServiceError(KbError):
    """The service answered with an error, or stopped answering."""


class ServiceGone(ServiceError):
    """The service stopped answering (it exited, or a one-off owner finished)."""


class Client:
    """Implements the Library protocol (server/api.py) by calling the service."""

    def __init__(self, socket_path: Path, timeout_s: float = 60.0) -> None:
        self.socket_path = socket_path
        self.role = "service"  # or "one-off": a command that owns the directory for a moment
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://kb", timeout=timeout_s
        )

    @classmethod
    def connect(cls, socket_path: Path) -> Client | None:
        """A client if a service answers on the socket, else None."""
        if not socket_path.exists():
            return None
        client = cls(socket_path, timeout_s=5.0)
        try:
            r = client._http.get(f"{API}/health")
            r.raise_for_status()
            client.role = str(r.json().get("role", "service"))
        except (httpx.HTTPError, ValueError):
            client.close()
            return None
        client._http.timeout = httpx.Timeout(600.0)
        return client

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, f"{API}{path}", json=body)
        except httpx.HTTPError as exc:
            raise ServiceGone(f"lost contact with the kb service: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:500]
            raise ServiceError(str(message))
        return r.json()

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status"))

    def send_digest(self) -> dict[str, Any]:
        return dict(self._call("POST", "/mail/digest"))

    def retry_outbox(self) -> dict[str, Any]:
        return dict(self._call("POST", "/mail/outbox/retry"))

    def search(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> list[dict[str, Any]]:
        return list(self.search_page(query, k, kind, file_type, tag, source, after, before)["hits"])

    def search_page(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> dict[str, Any]:
        body = {"query": query, "k": k, "kind": kind, "file_type": file_type, "tag": tag, "source": source,
                "after": after, "before": before, "facets": True}
        return dict(self._call("POST", "/search", body))

    def submit_ingest(self, paths: Sequence[str], *, force: bool = False, mirror: bool = True) -> str:
        return str(self._call("POST", "/ingest", {"paths": list(paths), "force": force, "mirror": mirror})["batch"])

    def submit_forget(self, paths: Sequence[str]) -> str:
        return str(self._call("POST", "/forget", {"paths": list(paths)})["batch"])

    def submit_reindex(self, *, reparse: bool = False) -> str:
        return str(self._call("POST", "/reindex", {"reparse": reparse})["batch"])

    def submit_summarize(self, paths: Sequence[str] = (), *, all_meetings: bool = False) -> str:
        return str(self._call("POST", "/summarize", {"paths": list(paths), "all": all_meetings})["batch"])

    def batch(self, batch: str) -> dict[str, Any] | None:
        return dict(self._call("GET", f"/batches/{batch}"))

    def retry(self, job_ids: Sequence[int] | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/retry", {"job_ids": list(job_ids or [])}))

    def held(self, *, confirm: bool | None = None) -> dict[str, Any]:
        if confirm is None:
            return dict(self._call("GET", "/held"))
        return dict(self._call("POST", "/held", {"confirm": confirm}))

    def ask_stream(
        self, question: str, k: int | None = None, kind: str | None = None, file_type: str | None = None,
        tag: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The service's answer events as they arrive (an error event becomes a ServiceError)."""
        body = {"question": question, "k": k, "kind": kind, "file_type": file_type, "tag": tag}
        try:
            with self._http.stream("POST", f"{API}/ask", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    try:
                        message = r.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = r.text[:500]
                    raise ServiceError(str(message))
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("event") == "error":
                        raise ServiceError(str(event["error"]["message"]))
                    yield event
        except httpx.HTTPError as exc:
            raise ServiceGone(f"lost contact with the kb service: {exc}") from None
