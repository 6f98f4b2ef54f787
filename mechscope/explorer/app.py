"""The explorer's web app: ``create_app(config)`` builds a FastAPI app over a
:class:`~mechscope.explorer.workspace.Workspace`; :func:`serve` / :func:`start_server` run it.

Endpoints (JSON unless noted; errors are ``{"error": {"type", "message"}}`` with 400 / 404 /
413 / 422):

=======  ==========================================  =============================================
GET      /                                           the page (static/index.html)
GET      /static/{file}                              app.js, style.css (from the package only)
GET      /api/info                                   model, dictionaries, circuits, linear, limits
POST     /api/prompt                                 tokens, top predictions, top features per token
POST     /api/feature                                a feature across the prompt (+ head split / DFA)
GET      /api/dictionaries/{d}/features/{f}          the feature's dashboard (computed once, cached)
GET      /api/dictionaries/{d}/dashboards            cache status of a dictionary's dashboards
GET      /api/circuits/{c}                           a circuit as a layered graph, with its score
GET      /api/linear                                 the linear view (images as PNG data URLs)
GET      /api/linear/column, /api/linear/row         one column / row (``y``, ``x`` or ``index``)
=======  ==========================================  =============================================

Dictionaries and circuits are named by their index in the configured lists; no request carries
a path. Model work runs one request at a time (a lock), in FastAPI's thread pool.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the request models and the
# Annotated bounds (built inside create_app from the configured limits) at runtime.
import logging
import socket
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

from mechscope.errors import MechscopeError
from mechscope.explorer import compute as C
from mechscope.explorer.config import ExplorerConfig
from mechscope.explorer.errors import ExplorerError, InputError, NotFoundError
from mechscope.explorer.workspace import Workspace

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def static_dir() -> Path:
    """The package's static files (the only files the app serves)."""
    return Path(str(resources.files("mechscope.explorer") / "static"))


def _error(status: int, kind: str, message: str, details=None):
    from fastapi.responses import JSONResponse

    body = {"error": {"type": kind, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return JSONResponse(status_code=status, content=body)


def create_app(config: ExplorerConfig | None = None, *, workspace: Workspace | None = None, host: str = "127.0.0.1"):
    """A FastAPI app serving ``config`` (or an already loaded ``workspace``).

    ``host``: the address the server will bind; for a loopback address the app only answers
    requests whose Host header is a loopback name (a guard against DNS rebinding).
    """
    from fastapi import FastAPI, Path as PathParam, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    if workspace is None:
        if config is None:
            raise ExplorerError("create_app needs an ExplorerConfig or a Workspace")
        workspace = Workspace(config)
    ws = workspace
    limits = ws.config.limits
    app = FastAPI(title="mechscope explorer", version="1", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.workspace = ws

    # -- request models (bounds from the config) -------------------------------------------------
    Prompt = Annotated[str, Field(min_length=1, max_length=limits.max_prompt_chars)]
    TopK = Annotated[int, Field(ge=1, le=limits.max_top_k)]

    class PromptRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: Prompt
        top_k_predictions: TopK = 5
        top_k_features: TopK = 8

    class FeatureRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: Prompt
        dictionary: Annotated[int, Field(ge=0, le=10_000)]
        feature: Annotated[int, Field(ge=0, le=100_000_000)]
        position: Annotated[int, Field(ge=0, le=100_000)] | None = None

    # -- guards ------------------------------------------------------------------------------
    if host in LOOPBACK:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1", "testserver"])

    @app.middleware("http")
    async def limit_and_headers(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_request_bytes):
            return _error(413, "too_large", f"request bodies are limited to {limits.max_request_bytes} bytes; found {length}")
        if request.method == "POST" and length is None:
            return _error(411, "length_required", "POST requests need a Content-Length header")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(_request, e: NotFoundError):
        return _error(404, "not_found", str(e))

    @app.exception_handler(MechscopeError)
    async def bad_request(_request, e: MechscopeError):
        return _error(400, type(e).__name__, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        details = [{"loc": [str(x) for x in err.get("loc", ())], "msg": err.get("msg", "")} for err in e.errors()]
        msg = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
        return _error(422, "validation", f"invalid request: {msg}", details)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        log.exception("explorer request failed")
        return _error(500, type(e).__name__, f"internal error: {e}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return _error(e.status_code, "http", str(e.detail))

    # -- page ---------------------------------------------------------------------------------
    static = static_dir()

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")

    # -- API ----------------------------------------------------------------------------------
    @app.get("/api/info")
    def info():
        return ws.info()

    @app.post("/api/prompt")
    def prompt(req: PromptRequest):
        run = ws.run(req.prompt)
        out = C.analyze_prompt(run, ws.model.tokenizer, [d.dictionary for d in ws.dictionaries], req.top_k_predictions, req.top_k_features)
        out["n_tokens"] = int(run.tokens.numel())
        return out

    @app.post("/api/feature")
    def feature(req: FeatureRequest):
        ld = ws.dictionary(req.dictionary)
        C.check_feature(ld.dictionary, req.feature, ld.id)
        run = ws.run(req.prompt)
        out = C.feature_activations(run, ld.id, ld.dictionary, req.feature)
        out["attention"] = None
        if ld.attention:
            pos = out["argmax"] if req.position is None else req.position
            with ws.lock:
                out["attention"] = C.attention_breakdown(run, ws.model, ld.id, ld.dictionary, req.feature, pos)
        elif req.position is not None and not 0 <= req.position < run.tokens.numel():
            raise InputError(f"position must be in [0, {run.tokens.numel()}); found {req.position}")
        return out

    @app.get("/api/dictionaries/{d}/features/{f}")
    def dashboard(d: Annotated[int, PathParam(ge=0, le=10_000)], f: Annotated[int, PathParam(ge=0, le=100_000_000)]):
        ld = ws.dictionary(d)
        C.check_feature(ld.dictionary, f, ld.id)
        t0 = time.perf_counter()
        dash, source = ws.dashboards(d)
        out = dash.feature(f, ws.model.tokenizer)
        out.update({"dictionary": d, "cache": source, "seconds": round(time.perf_counter() - t0, 3)})
        return out

    @app.get("/api/dictionaries/{d}/dashboards")
    def dashboard_status(d: Annotated[int, PathParam(ge=0, le=10_000)]):
        ws.dictionary(d)
        with ws.lock:
            directory, _, _ = ws.dashboard_dir(d)
        return {"dictionary": d, "in_memory": ws.dashboards_in_memory(d), "on_disk": (directory / "cfg.json").exists(),
                "cache_key": directory.name}

    @app.get("/api/circuits/{c}")
    def circuit(c: Annotated[int, PathParam(ge=0, le=10_000)], max_edges: Annotated[int, Query(ge=0, le=limits.max_edges)] = 300):
        lc = ws.circuit(c)
        out = C.circuit_view(lc.circuit, lc.graph, lc.ground_truth, max_edges=max_edges)
        out.update({"id": lc.id, "name": lc.name})
        return out

    @app.get("/api/linear")
    def linear():
        return ws.linear_overview()

    Coord = Annotated[int | None, Query(ge=0, le=1_000_000)]

    @app.get("/api/linear/column")
    def linear_column(y: Coord = None, x: Coord = None, index: Coord = None):
        from mechscope.explorer.linear_view import linear_column as column

        amap = ws.linear_map()
        with ws.lock:
            return column(amap, y, x, index)

    @app.get("/api/linear/row")
    def linear_row(y: Coord = None, x: Coord = None, index: Coord = None):
        from mechscope.explorer.linear_view import linear_row as row

        amap = ws.linear_map()
        with ws.lock:
            return row(amap, y, x, index)

    return app


# -- running ----------------------------------------------------------------------------------
class ServerHandle:
    """A uvicorn server running in a background thread (for tests and notebooks)."""

    def __init__(self, server, thread: threading.Thread, sock: socket.socket):
        self.server, self.thread, self.socket = server, thread, sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> ServerHandle:
    """Serve ``app`` from a background thread; ``port=0`` picks a free port. Returns once the
    server accepts connections."""
    import uvicorn

    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mechscope-explorer", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise ExplorerError(f"the explorer server did not start on {host}:{port} within {timeout} s")
        time.sleep(0.02)
    return ServerHandle(server, thread, sock)


def serve(app, host: str = "127.0.0.1", port: int = 8765, on_ready=None) -> None:
    """Serve ``app`` in the foreground until interrupted; ``on_ready(url)`` is called once bound."""
    import uvicorn

    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    if on_ready:
        on_ready(f"http://{'[' + host + ']' if ':' in host else host}:{bound}")
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        sock.close()
