"""Request guards in front of the Gradio app.

- State-changing requests from other web pages are refused (cross-site request forgery): Gradio only
  leaves out the CORS headers for a foreign Origin, the request itself still runs (an upload, a queue join).
- Request bodies other than uploads are bounded (Gradio parses them whole).
- On a loopback address, requests naming another Host are refused (DNS rebinding).
- Without --api, Gradio's by-name HTTP routes (/gradio_api/call/<name>) are closed: Gradio serves them
  for private endpoints too. The page itself only uses /gradio_api/queue/join.
- The direct routes (POST /gradio_api/run/<name>, /gradio_api/api/<name>) are never served: Gradio runs them
  outside the queue, so they would pass its size limit and the one-job-at-a-time device. With --api, jobs
  go through /gradio_api/call/<name> (or gradio_client), which join the same bounded queue as the page.
- A by-name route for a name the studio does not have gets 404 with a short message (Gradio answers 500).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _host(value: str) -> str:
    """Host name of an Origin or Host header value, lower case, without the port."""
    if "://" not in value:
        value = "//" + value
    try:
        return (urlsplit(value).hostname or "").lower()
    except ValueError:
        return ""


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """No Origin (not a browser), a loopback Origin, or the same host the request was sent to."""
    if origin is None:
        return True
    name = _host(origin)
    if not name or origin.strip().lower() == "null":
        return False
    return name in LOCAL_HOSTS or (bool(host) and name == _host(host))


MAX_BODY = 16 * 2**20  # bytes of a request that is not an upload (a job's values are a few kB)


def _length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return MAX_BODY + 1


CALL_ROUTES = ("/call/", "/gradio_api/call/")
BY_NAME = re.compile(r"/(?:gradio_api/)?(run|api|call/v2|call)/([^/]+)/?$")  # a POST that starts a job by name


def api_route(path: str) -> bool:
    """True for Gradio's by-name API routes (/gradio_api/call/<name>, with any root path in front)."""
    return any(prefix in path for prefix in CALL_ROUTES) or bool(BY_NAME.search(path))


def endpoint_names(app) -> set[str] | None:
    """The public endpoint names of the Gradio app serving this request (None when it cannot tell)."""
    try:
        blocks = app.get_blocks()
    except Exception:  # noqa: BLE001 - not a Gradio app, or not ready yet
        return None
    return {fn.api_name for fn in blocks.fns.values() if fn.api_name and fn.api_visibility == "public"}


def by_name_refusal(scope) -> JSONResponse | None:
    """404 for a direct route (it would bypass the queue) and for an endpoint name the studio does not have."""
    if scope["method"] != "POST":
        return None
    match = BY_NAME.search(scope.get("path", ""))
    if not match:
        return None
    route, name = match.groups()
    names = endpoint_names(scope.get("app"))
    if names is not None and name not in names:
        listed = ", ".join(f"/{n}" for n in sorted(names)) or "none"
        return JSONResponse({"error": f"No API endpoint named /{name}; the studio has: {listed}."},
                            status_code=404)
    if route in ("run", "api"):
        return JSONResponse({"error": f"POST /gradio_api/{route}/{name} is not served: every job waits in the "
                                      f"one bounded queue. Use POST /gradio_api/call/{name} (then GET "
                                      f"/gradio_api/call/{name}/<event_id>), or gradio_client."},
                            status_code=404)
    return None


class LocalOriginMiddleware:
    """ASGI middleware: 403 for POST/PUT/PATCH/DELETE whose Origin is another site; 404 for the by-name
    API routes unless `api`, for the direct routes that bypass the queue, and for unknown endpoint names."""

    def __init__(self, app, api: bool = False, local_only: bool = False):
        self.app = app
        self.api = api
        self.local_only = local_only  # served on a loopback address: other Host names are refused

    async def __call__(self, scope, receive, send):
        host = _host(Headers(scope=scope).get("host") or "") if scope["type"] == "http" else ""
        if scope["type"] == "http" and self.local_only and host not in LOCAL_HOSTS:
            # a page whose own name resolves to 127.0.0.1 (DNS rebinding) would pass the Origin rule
            await JSONResponse({"error": "Host not allowed."}, status_code=403)(scope, receive, send)
            return
        if scope["type"] == "http" and not self.api and api_route(scope.get("path", "")):
            response = JSONResponse({"error": "The HTTP API is closed; start the studio with --api."},
                                    status_code=404)
            await response(scope, receive, send)
            return
        refusal = by_name_refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            if not scope.get("path", "").endswith("/upload") and _length(headers) > MAX_BODY:
                # Gradio reads a JSON body whole; uploads have their own limit (max_file_size)
                response = JSONResponse({"error": "Request too large."}, status_code=413)
                await response(scope, receive, send)
                return
            if not origin_allowed(headers.get("origin"), headers.get("host")):
                response = JSONResponse({"error": "Cross-origin request refused."}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
