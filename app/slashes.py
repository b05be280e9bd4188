"""One trailing slash more or less names the same route, answered in place: no redirect.

Starlette's `redirect_slashes` builds its absolute `Location` from the client's Host header, so a request with
a forged Host made the server redirect to any site. `create_app` turns that off and wraps the app in
`TrailingSlashes`, which drops trailing slashes from the path before routing ("/v1/index/" is "/v1/index").
"""

from __future__ import annotations


class TrailingSlashes:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope["path"] = path.rstrip("/") or "/"
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
