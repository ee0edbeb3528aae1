"""The FastAPI app: a JSON API under /api/ (OpenAPI page at /docs) and one page at /.

    GET  /api/health                  what is served (index size and version, run, clusters, verification)
    POST /api/search                  multipart `image` (a crop) or `item` (an index item id), optional `top_k`
    POST /api/verify                  multipart `a`, `b` (crops) or `a_item`, `b_item` (index item ids)
    GET  /api/items                   a page of gallery items, to pick a query from
    GET  /api/failures                leave-one-out ranking failures of the index's labelled items
    GET  /api/thumb/{item_id}         an index item's stored image
    GET  /api/identities[/{gid}]      a track run's global identities; one identity's timeline across cameras
    GET  /api/run/{path}              an image of the track run folder (crops, timeline.png, contact_sheet.png)
    GET  /api/clusters[/{cluster}]    a cluster run's clusters; one cluster's members
    GET  /api/cluster_thumb/{row}     the image of one clusters.csv row

Safety: the CLI binds 127.0.0.1 unless given a token; with a token every request must carry it (`Authorization:
Bearer T`, `?token=T`, or the cookie the page sets after a `?token=` visit). Request bodies are buffered up to a
bound and refused with 413 beyond it, before any parsing; uploads are decoded by the one decoder (bomb refusal).
"""

from __future__ import annotations

import hmac
import importlib.metadata
import importlib.resources
import importlib.util
import ipaddress
import math
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import ReIDError
from .batching import SearchBatcher
from .sources import (
    DEFAULT_MAX_PIXELS,
    Clusters,
    LiveIndex,
    RunFolder,
    UploadError,
    best_tracklet,
    decode_upload,
    image_file,
    ranking_failures,
)

TOKEN_COOKIE = "reidkit_token"
__version__ = importlib.metadata.version("reidkit")  # not `reidkit.__version__`: web sits below the package facade
MAX_TOP_K = 100


@dataclass
class WebConfig:
    """What `reidkit serve` serves. `model` embeds query crops (the index's model) and verifies pairs."""

    index: Path | None = None
    tracks: Path | None = None
    clusters: Path | None = None
    model: Path | None = None
    token: str | None = None
    max_upload_bytes: int = 8 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    top_k: int = 10
    device: str = "cpu"


class WebState:
    """The served sources and the model, opened once at start: bad folders, and a model whose features do not fit
    the index, fail then (naming the option), not at the first request."""

    def __init__(self, config: WebConfig):
        self.config = config
        self.index = LiveIndex(config.index) if config.index is not None else None
        self.run = RunFolder(config.tracks) if config.tracks is not None else None
        self.clusters = Clusters.load(config.clusters) if config.clusters is not None else None
        # a hit's identity is a global id of the run only when the index is the run's own tracklet gallery
        self.hits_are_identities = bool(self.run and config.index and
                                        Path(config.index).resolve() == self.run.root / "gallery")
        self._extractor: Any = None
        self._batcher: SearchBatcher | None = None
        self.failures: dict[tuple, Any] = {}  # the last /api/failures answer, by index version
        self._lock, self._batcher_lock = threading.Lock(), threading.Lock()
        self.notes: list[str] = []  # e.g. the model is not the one that built the index (an export of it?)
        if config.model is not None and self.index is not None:  # a model that cannot search the index fails now
            self.notes = self.index.index.check_extractor(self.extractor(), allow_other_model=True)

    def extractor(self) -> Any:
        if self.config.model is None:
            raise HTTPException(400, "no model: start the server with --model to search by uploaded crops")
        with self._lock:
            if self._extractor is None:
                from ..inference import build_extractor

                self._extractor = build_extractor(self.config.model, device=self.config.device)
        return self._extractor

    def batcher(self) -> SearchBatcher:
        """The one worker that embeds and searches the crops of concurrent requests together."""
        live, extractor = self.live_index(), self.extractor()
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = SearchBatcher(extractor.embed, lambda queries, k: live.current().search(queries, k=k))
        return self._batcher

    def batch_counts(self) -> dict[str, int]:
        b = self._batcher
        return {"batches": b.batches, "queries": b.queries, "largest": b.largest} if b else \
            {"batches": 0, "queries": 0, "largest": 0}

    def live_index(self) -> LiveIndex:
        if self.index is None:
            raise HTTPException(404, "no index is served (start the server with --index)")
        return self.index


# ------------------------------------------------------------------------------------------------ urls

def thumb_url(item_id: str) -> str:
    return f"/api/thumb/{quote(item_id, safe='')}"


def run_url(relative: str) -> str:
    return f"/api/run/{quote(relative)}"


def _known(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def describe_item(meta: dict[str, Any]) -> dict[str, Any]:
    """An index row for the client: its metadata, the file's name (not the server's folder layout) and its
    thumbnail URL (None for crops indexed from memory, which have no stored image)."""
    path = meta.get("path")
    return {"id": meta["id"], "pid": meta.get("pid"), "camid": meta.get("camid"), "track": meta.get("track"),
            "frame": meta.get("frame"), "time": _known(meta.get("time")), "source": meta.get("source"),
            "camera": meta.get("source") or (None if meta.get("camid") is None else f"c{meta['camid'] + 1}"),
            "name": os.path.basename(path) if path else None, "thumb": thumb_url(meta["id"]) if path else None}


# ------------------------------------------------------------------------------------------------ middleware

class BodyLimit:
    """Buffers a request body up to `limit` bytes and answers 413 beyond it without reading further (a declared
    Content-Length above the limit is refused before any byte is read): uploads cannot fill memory or disk."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send, declared)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, str(size).encode())
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable, declared: bytes) -> None:
        detail = (f"request body of {declared.decode(errors='replace')} bytes is above the limit of {self.limit} "
                  "bytes (--max-upload-mb)")
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def _presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)


def _add_token_check(app: FastAPI, token: str) -> None:
    expected = token.encode()

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable) -> Response:
        presented = _presented_token(request)
        if presented is None:
            return JSONResponse({"detail": "authentication required: send `Authorization: Bearer <token>` or "
                                 "?token=<token>"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(presented.encode(), expected):
            return JSONResponse({"detail": "wrong token"}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token") and request.url.path == "/":  # the page's images then need no ?token=
            response.set_cookie(TOKEN_COOKIE, presented, httponly=True, samesite="strict")
        return response


# ------------------------------------------------------------------------------------------------ the app

def create_app(config: WebConfig) -> FastAPI:
    """The app for `config`; `reidkit serve` runs it with uvicorn, tests with FastAPI's TestClient."""
    state = WebState(config)
    app = FastAPI(title="reidkit", version=__version__, docs_url=None,  # /docs is served offline: _add_api_docs
                  description="Person re-identification: search a gallery by a crop, follow an identity across "
                              "cameras, verify two crops, browse clusters.")
    app.state.reidkit = state
    # 2 crops of the upload limit plus the multipart envelope; each crop is then checked against the limit itself
    app.add_middleware(BodyLimit, limit=2 * config.max_upload_bytes + (64 << 10))
    if config.token:
        _add_token_check(app, config.token)  # added last = outermost: refused before any body is read

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(ReIDError)
    async def reid_error(request: Request, exc: ReIDError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    _add_pages(app)
    _add_api_docs(app)
    _add_search(app, state)
    _add_verify(app, state)
    _add_run(app, state)
    _add_clusters(app, state)
    return app


def _add_pages(app: FastAPI) -> None:
    page = importlib.resources.files("reidkit.web").joinpath("static/index.html")

    @app.get("/", include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page.read_text(encoding="utf-8"), headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def _add_api_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs with Swagger UI's files from the swagger-ui-bundle package, so the page works on a
    machine without internet (FastAPI's default loads them from a CDN)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # not installed: FastAPI's CDN page, which needs internet in the browser
        swagger_ui_path = None
    assets = "/docs-assets"
    if swagger_ui_path is not None:
        app.mount(assets, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="reidkit API")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="reidkit API",
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon-32x32.png")


def _file(path: Path | None, what: str) -> FileResponse:
    if path is None:
        raise HTTPException(404, f"{what}: not found")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


def _add_search(app: FastAPI, state: WebState) -> None:
    config = state.config

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """What this server serves."""
        index = None
        if state.index is not None:
            live = state.index.current()
            index = {"count": live.count, "dim": live.dim, "version": live.version,
                     "model": live.extractor_info.get("name")}
        return {"status": "ok", "version": __version__, "index": index, "tracks": state.run is not None,
                "clusters": state.clusters is not None, "hits_are_identities": state.hits_are_identities,
                "verify": config.model is not None and importlib.util.find_spec("reidkit.analysis.verify") is not None,
                "auth": bool(config.token), "max_upload_bytes": config.max_upload_bytes, "top_k": config.top_k,
                "search_batches": state.batch_counts(), "notes": state.notes}

    @app.get("/api/items")
    def items(offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=200)] = 24,
              with_image: bool = True) -> dict[str, Any]:
        """A page of gallery items (in index order), e.g. to pick a query from."""
        _, metadata, manifest = state.live_index().snapshot()
        rows = np.flatnonzero(metadata.paths != None) if with_image else np.arange(len(metadata))  # noqa: E711
        return {"version": manifest.get("version"), "total": len(rows),
                "items": [describe_item(metadata.row(int(i))) for i in rows[offset:offset + limit]]}

    @app.post("/api/search")
    def search(image: Annotated[UploadFile | None, File(description="query crop (JPEG/PNG/BMP/WEBP)")] = None,
               item: Annotated[str | None, Form(description="or: the id of an indexed item as the query")] = None,
               top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = config.top_k) -> dict[str, Any]:
        """Ranked gallery hits for a query crop: rank, cosine distance (1 - cosine similarity), item id,
        metadata and thumbnail URL, all from one committed index version."""
        live = state.live_index()
        if (image is None) == (item is None):
            raise HTTPException(400, "send exactly one of `image` (a crop) or `item` (an indexed item id)")
        query: dict[str, Any]
        if image is not None:
            crop = decode_upload(image.file.read(), "image", config.max_upload_bytes, config.max_pixels)
            results, row = state.batcher().submit(crop, top_k)
            query = {"kind": "upload", "name": image.filename, "width": crop.width, "height": crop.height}
        else:
            found = live.row_of(item)
            if found is None:
                raise HTTPException(404, f"item {item!r}: not in the index")
            row, gallery, metadata = found
            query = {"kind": "item", **describe_item(metadata.row(row))}
            results, row = live.current().search(gallery[row:row + 1], k=top_k), 0
        hits = [{"rank": h["rank"], "distance": round(1.0 - h["score"], 6), "score": h["score"],
                 **describe_item(h)} for h in results.hits(row)[:top_k]]
        return {"version": results.version, "count": len(results.metadata), "method": results.method,
                "query": query, "hits": hits}

    @app.get("/api/failures")
    def failures(limit: Annotated[int, Query(ge=1, le=200)] = 20,
                 max_queries: Annotated[int, Query(ge=1, le=20000)] = 2000) -> dict[str, Any]:
        """Evaluation failures of a labelled index: every item with a known identity (up to `max_queries`) queries
        the others, Market-style (itself and its identity's same-camera items not counted); the queries whose
        first hit is another identity, worst first, with their top-10 hits marked correct or not."""
        features, meta, manifest = state.live_index().snapshot()
        key = (manifest.get("version"), len(meta), max_queries)
        found = state.failures.get(key)
        if found is None:  # one batched search per index version (a 20k gallery takes seconds), then cached
            found = ranking_failures(features, meta, max_queries=max_queries)
            state.failures = {key: found}

        def item(row: int, query_pid: int | None = None) -> dict[str, Any]:
            described = describe_item(meta.row(row))
            return described if query_pid is None else {**described, "correct": described["pid"] == query_pid}

        return {"version": manifest.get("version"), "queries": found.queries, "rank1": found.rank1,
                "failures": len(found.rows),
                "rows": [{"query": item(q), "first_correct_rank": first,
                          "hits": [item(h, int(meta.pids[q])) for h in hits]} for q, hits, first in
                         found.rows[:limit]]}

    @app.get("/api/thumb/{item_id:path}")
    def thumb(item_id: str) -> FileResponse:
        """The stored image of an index item (looked up by id; the request never names a file)."""
        found = state.live_index().row_of(item_id)
        if found is None:
            raise HTTPException(404, f"item {item_id!r}: not in the index")
        row, _, metadata = found
        return _file(image_file(metadata.paths[row]), f"item {item_id!r} image")


def _add_verify(app: FastAPI, state: WebState) -> None:
    config = state.config

    def crop(upload: UploadFile | None, item: str | None, field: str) -> Any:
        if (upload is None) == (item is None):
            raise HTTPException(400, f"send exactly one of `{field}` (a crop) or `{field}_item` (an item id)")
        if upload is not None:
            return decode_upload(upload.file.read(), field, config.max_upload_bytes, config.max_pixels)
        found = state.live_index().row_of(item)
        path = image_file(found[2].paths[found[0]]) if found else None
        if path is None:
            raise HTTPException(404, f"{field}_item {item!r}: not an indexed item with an image")
        return path

    @app.post("/api/verify")
    def verify_pair(a: Annotated[UploadFile | None, File()] = None, b: Annotated[UploadFile | None, File()] = None,
                    a_item: Annotated[str | None, Form()] = None,
                    b_item: Annotated[str | None, Form()] = None) -> dict[str, Any]:
        """Do crops a and b show the same person? reidkit.analysis.verify with the served model: probability
        (calibrated; None for an uncalibrated embedding model), decision, threshold, score, notes."""
        if config.model is None:
            raise HTTPException(400, "no model: start the server with --model to verify crops")
        try:
            from ..analysis.verify import verify
        except ImportError as exc:  # pragma: no cover - the analysis package is part of reidkit
            raise HTTPException(501, f"verification is not available in this build ({exc})") from None
        first, second = crop(a, a_item, "a"), crop(b, b_item, "b")
        return verify(first, second, model=config.model, device=config.device).to_dict()


def _add_run(app: FastAPI, state: WebState) -> None:
    def run() -> RunFolder:
        if state.run is None:
            raise HTTPException(404, "no track run is served (start the server with --tracks RUN)")
        return state.run

    @app.get("/api/identities")
    def identities() -> dict[str, Any]:
        """The run's global identities: time span, cameras, number of tracklets and the best crop of each."""
        folder = run()
        document = folder.document()
        out = []
        for gid, entry in document.get("identities", {}).items():
            best = best_tracklet(entry.get("cameras", {}))
            out.append({"gid": int(gid), "first_seen": entry.get("first_seen"), "last_seen": entry.get("last_seen"),
                        "boxes": entry.get("boxes"), "cameras": sorted(entry.get("cameras", {})),
                        "tracklets": sum(len(t) for t in entry.get("cameras", {}).values()),
                        "crop": run_url(best[1]["crop"]) if best else None})
        out.sort(key=lambda e: e["gid"])
        extras = folder.extras()
        return {"num_identities": len(out), "complete": document.get("complete"),
                "cameras": [c.get("name", c) if isinstance(c, dict) else c for c in document.get("cameras", [])],
                "timeline": run_url("timeline.png") if extras["timeline"] else None,
                "contact_sheet": run_url("contact_sheet.png") if extras["contact_sheet"] else None,
                "identities": out}

    @app.get("/api/identities/{gid}")
    def identity(gid: int) -> dict[str, Any]:
        """One global identity's timeline: per camera, its tracklets (start/end seconds, frames, boxes) with their
        best crops, in time order."""
        entry = run().document().get("identities", {}).get(str(gid))
        if entry is None:
            raise HTTPException(404, f"identity {gid}: not in the run")
        cameras = []
        for name, tracks in sorted(entry.get("cameras", {}).items()):
            cameras.append({"camera": name, "tracklets": [
                {**t, "crop": run_url(t["crop"]) if t.get("crop") else None}
                for t in sorted(tracks, key=lambda t: t.get("start") or 0.0)]})
        best = best_tracklet(entry.get("cameras", {}))
        return {"gid": gid, "first_seen": entry.get("first_seen"), "last_seen": entry.get("last_seen"),
                "boxes": entry.get("boxes"), "crop": run_url(best[1]["crop"]) if best else None, "cameras": cameras}

    @app.get("/api/run/{relative:path}")
    def run_file(relative: str) -> FileResponse:
        """An image inside the track run folder (resolved; anything outside it, or not an image, is 404)."""
        return _file(run().file(relative), f"run file {relative!r}")


def _add_clusters(app: FastAPI, state: WebState) -> None:
    def clusters() -> Clusters:
        if state.clusters is None:
            raise HTTPException(404, "no clusters are served (start the server with --clusters DIR)")
        return state.clusters

    def member(row: int) -> dict[str, Any]:
        path = clusters().paths[row]
        return {"row": row, "name": os.path.basename(path), "thumb": f"/api/cluster_thumb/{row}"}

    @app.get("/api/clusters")
    def cluster_list(offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        """Clusters, largest first (-1 = unassigned, last), with a few sample crops each."""
        summary = clusters().summary()
        return {"total": len(summary), "images": len(clusters().paths),
                "clusters": [{"cluster": c["cluster"], "size": c["size"],
                              "samples": [member(r) for r in c["samples"]]}
                             for c in summary[offset:offset + limit]]}

    @app.get("/api/clusters/{cluster}")
    def cluster_members(cluster: int) -> dict[str, Any]:
        rows = clusters().members(cluster)
        if not rows:
            raise HTTPException(404, f"cluster {cluster}: not in clusters.csv")
        return {"cluster": cluster, "size": len(rows), "members": [member(r) for r in rows]}

    @app.get("/api/cluster_thumb/{row}")
    def cluster_thumb(row: int) -> FileResponse:
        return _file(clusters().file(row), f"clusters.csv row {row} image")


# ------------------------------------------------------------------------------------------------ serving

def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only addresses served without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(config: WebConfig, host: str = "127.0.0.1", port: int = 8000,
          announce: Callable[[str], None] | None = None) -> None:
    """Run the app with uvicorn until interrupted. Any address other than loopback needs `config.token`."""
    import uvicorn

    if not is_loopback(host) and not config.token:
        raise ReIDError(f"--host {host}: serving beyond this machine needs a token (--token or --token-file); "
                        "every request must then carry it")
    app = create_app(config)  # sources are opened (and refused) before the port is bound
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        announce(f"serving on http://{shown}:{port}/" + ("  (token required)" if config.token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
