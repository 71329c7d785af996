"""Request guards in front of the Gradio app.

- State-changing requests from other web pages are refused (cross-site request forgery): Gradio only
  leaves out the CORS headers for a foreign Origin, the request itself still runs (an upload, a queue join).
- Request bodies other than uploads are bounded (Gradio parses them whole).
- On a loopback address, requests naming another Host are refused (DNS rebinding).
- Without --api, Gradio's by-name HTTP routes (/gradio_api/call/<name>) are closed: Gradio serves them
  for private endpoints too. The page itself only uses /gradio_api/queue/join.
- The direct routes (POST /gradio_api/run/<name>, /gradio_api/api/<name>) are refused for every queued
  function: with --api Gradio runs them outside the queue, past its size limit and the one-job-at-a-time
  device. Jobs go through /gradio_api/call/<name> (or gradio_client), which join the same bounded queue as
  the page; the page's own unqueued handlers (/gradio_api/run/predict with their fn_index) still pass.
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


CLOSED = "The HTTP API is closed; start the studio with --api."
CALL_ROUTES = ("/call/", "/gradio_api/call/")
CALL = re.compile(r"/(?:gradio_api/)?call(?:/v2)?/([^/]+)/?$")  # POST: joins the queue by endpoint name
DIRECT = re.compile(r"/(?:gradio_api/)?(run|api)/([^/]+)/?$")  # POST: runs a function outside the queue


def api_route(path: str) -> bool:
    """True for Gradio's by-name API routes (/gradio_api/call/<name>, with any root path in front)."""
    return any(prefix in path for prefix in CALL_ROUTES)


def _blocks(scope):
    """The Blocks behind the Gradio app serving this request (None when it cannot tell)."""
    try:
        return scope["app"].get_blocks()
    except Exception:  # noqa: BLE001 - not a Gradio app, or not ready yet
        return None


def _public_names(blocks) -> list[str]:
    return sorted(fn.api_name for fn in blocks.fns.values() if fn.api_name and fn.api_visibility == "public")


def _unknown(name: str, blocks) -> JSONResponse:
    listed = ", ".join(f"/{n}" for n in _public_names(blocks)) or "none"
    return JSONResponse({"error": f"No API endpoint named /{name}; the studio has: {listed}."}, status_code=404)


def _queued_only(route: str, name: str) -> JSONResponse:
    return JSONResponse({"error": f"POST /gradio_api/{route}/{name} is not served: every job waits in the one "
                                  f"bounded queue. Use POST /gradio_api/call/{name} (then GET "
                                  f"/gradio_api/call/{name}/<event_id>), or gradio_client."}, status_code=404)


async def _read_body(receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY or not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _fn_index(body: bytes):
    import json

    try:
        value = json.loads(body or b"null")
    except ValueError:
        return None
    index = value.get("fn_index") if isinstance(value, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) else None


async def by_name_check(scope, receive, api: bool):
    """(a 404 response or None, the receive to go on with) for a POST to a by-name route.

    Direct routes (/gradio_api/run/<name>, /gradio_api/api/<name>) run a function outside the queue (with
    --api Gradio serves them for queued functions too): they are refused for every queued function, named
    or given by fn_index, and pass only for the page's own unqueued handlers. A name that is no endpoint
    gets 404 with the names there are (Gradio answers 500).
    """
    path = scope.get("path", "")
    blocks = _blocks(scope) if scope["method"] == "POST" else None
    if blocks is None:
        return None, receive
    call = CALL.search(path)
    if call and api and call.group(1) not in _public_names(blocks):
        return _unknown(call.group(1), blocks), receive
    direct = DIRECT.search(path)
    if not direct:
        return None, receive
    route, name = direct.groups()
    body = await _read_body(receive)
    index = _fn_index(body)
    if index is not None:
        fn = blocks.fns.get(index)
    else:
        fn = next((f for f in blocks.fns.values() if f.api_name == name and f.api_visibility == "public"), None)
    if fn is None or fn.queue:
        if not api:
            return JSONResponse({"error": CLOSED}, status_code=404), receive
        return (_unknown(name, blocks) if fn is None else _queued_only(route, fn.api_name or name)), receive
    return None, _replay(body, receive)


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
            response = JSONResponse({"error": CLOSED}, status_code=404)
            await response(scope, receive, send)
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
            refusal, receive = await by_name_check(scope, receive, self.api)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
