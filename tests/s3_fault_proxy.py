"""An HTTP proxy on 127.0.0.1 that fails a set share of S3 requests with 503 SlowDown, or denies a prefix."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
           b"<Message>Access Denied</Message></Error>")


def _touches(request_path: str, denied: str) -> bool:
    """Whether a path-style S3 request reads, writes or lists under ``denied`` (``bucket/prefix``)."""
    from urllib.parse import parse_qs, unquote

    url = urlparse(request_path)
    key = unquote(url.path).lstrip("/")
    bucket, prefix = denied.split("/", 1)
    listed = parse_qs(url.query).get("prefix", [""])[0]
    return key.startswith(denied) or (key.rstrip("/") == bucket and (listed.startswith(prefix) or
                                                                      prefix.startswith(listed) and listed != ""))


class FaultProxy:
    """Forwards to ``upstream``; every ``fail_every``-th request (or all, with 1) gets a 503.

    Args:
        upstream: The real S3 endpoint, e.g. ``http://127.0.0.1:5000``.
        fail_every: Fail one request in this many; 1 fails them all; 0 none.
        deny: ``bucket/prefix``: requests for keys under it (and listings of it) get 403
            AccessDenied, as with credentials that do not reach that location.
    """

    def __init__(self, upstream: str, fail_every: int = 0, deny: str | None = None):
        self.upstream = urlparse(upstream)
        self.fail_every = fail_every
        self.deny = deny
        self.requests = 0
        self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests += 1
                    fail = bool(proxy.fail_every) and proxy.requests % proxy.fail_every == 0
                    proxy.failed += fail
                if proxy.deny and _touches(self.path, proxy.deny):
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_DENIED)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_DENIED)
                    return
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but must keep the object's real length.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _safe_handle(self):
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up (e.g. a ranged read it no longer needs)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _safe_handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
