"""A real HTTPS server on loopback serving MTA-STS policy files, for the relay's tests.

It answers `GET /.well-known/mta-sts.txt` with the body set for the request's
Host (`policies`), `text/plain` unless told otherwise, 404 for a host it
has no policy for; `redirect` answers a host with a 302 instead, `requests`
counts what was asked. A thread of its own (the stdlib server), so the relay
under test (a process, or the test's event loop) fetches from it for real.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLICY_PATH = "/.well-known/mta-sts.txt"


class PolicyServer:
    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.policies: dict[str, bytes] = {}  # Host -> body
        self.content_type = "text/plain"
        self.redirect: set[str] = set()
        self.requests: list[str] = []  # Host of each request, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rpartition(":")[0] or (
                    self.headers.get("Host") or ""
                )
                server.requests.append(host)
                body = server.policies.get(host)
                if host in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", f"https://{host}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path != POLICY_PATH or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the tests read `requests`

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> PolicyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the listening socket: the host goes away."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode()
