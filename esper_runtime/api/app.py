"""The REST API (appendix F.3 / F.5) and the Nissa page, on FastAPI.

Every ``/api/v1`` endpoint requires a bearer JWT (``auth.TokenVerifier``): reading needs the read role
(``esper:read``, or the write role), writing the write role (``esper:write``). Data comes
from the log's materialized state — the Urza library from ``state.urza.library`` (folded from the log when the
processors never ran), runs and alerts from the ClickHouse tables (through the processors' app when it owns the
embedded store). Errors follow F.5 with a JSON body ``{"error": {"code", "message"}}``; a 500 carries a
``trace_id`` that is also logged with the stack, which never reaches the client.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from esper_runtime.api.auth import ApiSettings, AuthError, Principal, TokenVerifier
from esper_runtime.nissa.alerts import check_run_id, evaluate
from streams import Backbone
from streams.lifecycle import IN_PROGRESS

__all__ = ["create_app", "ApiData"]

log = logging.getLogger("esper.api")
NISSA_DIR = Path(__file__).resolve().parent.parent / "nissa" / "static"


class KernelQuery(BaseModel):
    """F.3's KernelQuery: validated artifacts carrying every tag, for a chunk width and hardware."""

    model_config = ConfigDict(extra="forbid")
    tags: list[str] = Field(default_factory=list, max_length=32)
    chunk_width: int | None = Field(default=None, ge=1, le=1 << 20)
    hardware: str | None = Field(default=None, max_length=64)
    blueprint_id: str | None = Field(default=None, max_length=128)
    max_results: int = Field(default=20, ge=1, le=500)


class KernelOut(BaseModel):
    artifact_id: str
    blueprint_id: str
    hardware: str
    pipeline: str
    chunk_width: int | None
    status: str
    tags: list[str]
    risk_score: float | None
    conf_level: str | None
    sha256: str
    size_bytes: int
    latency_ms_mean: float | None = None
    memory_mb_peak: float | None = None


class KernelQueryResult(BaseModel):
    kernels: list[KernelOut]
    total: int


MAX_BODY_BYTES = 1 << 20  # a request body over this is refused (413) before it is read in full


class BlueprintSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ir: dict
    chunk_widths: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=list, max_length=16)
    pipelines: list[Literal["fast", "standard", "aggressive"]] = Field(default_factory=list)


def _kernel_out(k) -> KernelOut:
    report = k.report or {}
    return KernelOut(artifact_id=k.artifact_id, blueprint_id=k.blueprint_id, hardware=k.hardware,
                     pipeline=k.pipeline, chunk_width=k.features, status=k.status, tags=k.tags,
                     risk_score=k.risk_score, conf_level=k.conf_level, sha256=k.sha256, size_bytes=k.size_bytes,
                     latency_ms_mean=report.get("latency_ms_mean"), memory_mb_peak=report.get("memory_mb_peak"))


class ApiData:
    """What the endpoints read: the Urza view (cached a few seconds) and SQL on the analytics store (through the
    processors when they own it)."""

    def __init__(self, backbone: Backbone, cache_s: float = 2.0):
        self.bb = backbone
        self.cache_s = cache_s
        self._urza = None
        self._urza_at = 0.0
        self._lock = threading.Lock()  # one embedded chdb session per process at a time

    def urza(self):
        from streams.state import read_state_topic
        from views.live import processors_running
        from views.urza_view import UrzaView
        from views.folds import fold_library

        with self._lock:
            if self._urza is None or time.monotonic() - self._urza_at > self.cache_s:
                # the processors' materialized library while they run (current, and quick to read); otherwise a
                # fold of the log, which is always current
                if processors_running(self.bb.settings):
                    entries = read_state_topic(self.bb, "state.urza.library")
                    self._urza = UrzaView.restore(entries.items(), lambda raw: self.bb.serde.decode_typed(raw))
                else:
                    self._urza = fold_library(self.bb)
                self._urza_at = time.monotonic()
            return self._urza

    def rows(self, sql: str) -> list[dict]:
        from processors.clickhouse import open_store

        with self._lock:
            store = open_store(self.bb.settings)
            try:
                return store.rows(sql)
            finally:
                store.close()


def create_app(data: ApiData, verifier: TokenVerifier, settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or verifier.settings
    app = FastAPI(title="Esper API", version="1", description="Urza queries, system status and Nissa's data "
                  "(appendix F.3). Every /api/v1 endpoint requires a bearer JWT.")
    bearer = HTTPBearer(auto_error=False)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        """Refuse a body over MAX_BODY_BYTES (413): by its Content-Length when it says, by counting otherwise."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return _error(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            size = 0
            chunks = []
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return _error(413, f"the request body is over {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)

            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}
            request = Request(request.scope, receive)
        return await call_next(request)

    def principal(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            return verifier.verify(creds.credentials)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    def reader(who: Principal = Depends(principal)) -> Principal:
        if settings.read_role not in who.roles and settings.write_role not in who.roles:
            raise HTTPException(403, f"this needs the role {settings.read_role!r}")
        return who

    def writer(who: Principal = Depends(principal)) -> Principal:
        if settings.write_role not in who.roles:
            raise HTTPException(403, f"this needs the role {settings.write_role!r}")
        return who

    def run_id_ok(run_id: str) -> str:
        try:
            return check_run_id(run_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    def _error(code: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=code)

    # ------------------------------------------------------------------ errors (F.5)
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": {"code": exc.status_code, "message": exc.detail}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        details = [{"loc": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"error": {"code": 400, "message": "the request failed validation", "details": details}},
                            status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        trace_id = uuid.uuid4().hex
        log.error("trace_id=%s %s %s failed", trace_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": {"code": 500, "message": "internal error", "trace_id": trace_id}},
                            status_code=500)

    # ------------------------------------------------------------------ Urza
    @app.post("/api/v1/kernels/query", response_model=KernelQueryResult, tags=["urza"])
    def kernels_query(query: KernelQuery, who: Principal = Depends(reader)) -> KernelQueryResult:
        found = data.urza().query(query.tags, hardware=query.hardware, features=query.chunk_width,
                                  blueprint_id=query.blueprint_id, limit=10_000)
        return KernelQueryResult(kernels=[_kernel_out(k) for k in found[: query.max_results]], total=len(found))

    @app.get("/api/v1/kernels", response_model=KernelQueryResult, tags=["urza"])
    def kernels_all(who: Principal = Depends(reader)) -> KernelQueryResult:
        kernels = sorted(data.urza().kernels.values(), key=lambda k: (k.blueprint_id, k.artifact_id))
        return KernelQueryResult(kernels=[_kernel_out(k) for k in kernels], total=len(kernels))

    @app.get("/api/v1/blueprints/{blueprint_id}", tags=["urza"])
    def blueprint(blueprint_id: str, who: Principal = Depends(reader)) -> dict:
        view = data.urza()
        bp = view.blueprints.get(blueprint_id)
        if bp is None:
            raise HTTPException(404, f"no blueprint {blueprint_id!r}")
        return bp.to_dict() | {"kernels": [_kernel_out(view.kernels[a]).model_dump() for a in bp.artifacts
                                           if a in view.kernels]}

    @app.post("/api/v1/blueprints", status_code=202, tags=["urza"])
    def submit(body: BlueprintSubmission, who: Principal = Depends(writer)) -> dict:
        """Submit a BlueprintIR: validated statically, then published for Tezzeret to compile (202)."""
        from esper_runtime.blueprints import Blueprint, BlueprintInvalid
        from esper_runtime.blueprints.validate import validate
        from esper_runtime.urza.library import submit_blueprint
        from streams.envelope import EnvelopeFactory

        try:
            bp = Blueprint.parse(body.ir)
            validate(bp)
        except BlueprintInvalid as exc:
            raise HTTPException(400, f"invalid blueprint: {exc}") from None
        except (TypeError, ValueError, KeyError, RecursionError) as exc:  # a shape no check above foresaw
            raise HTTPException(400, f"invalid blueprint: {type(exc).__name__}: {str(exc)[:300]}") from None
        with data.bb.publisher() as pub:
            submit_blueprint(pub, EnvelopeFactory("api", f"api/{who.subject}"), bp, submitted_by=who.subject,
                             widths=tuple(body.chunk_widths), pipelines=tuple(body.pipelines))
        return {"blueprint_id": bp.blueprint_id, "status": "SUBMITTED"}

    # ------------------------------------------------------------------ runs, status, alerts (Tamiyo, Nissa)
    @app.get("/api/v1/system/status", tags=["system"])
    def system_status(run_id: str | None = None, who: Principal = Depends(reader)) -> dict:
        if run_id is None:
            latest = data.rows("SELECT run_id FROM esper.epochs ORDER BY occurred_at DESC LIMIT 1")
            if not latest:
                return {"status": "IDLE", "run_id": None, "current_epoch": None, "validation_accuracy": None,
                        "active_adaptations": 0, "active_seed_id": None}
            run_id = latest[0]["run_id"]
        run = run_id_ok(run_id)
        epoch = data.rows(f"SELECT epoch, val_accuracy, dateDiff('second', occurred_at, now64(3)) AS age_s "
                          f"FROM esper.epochs FINAL WHERE run_id = '{run}' ORDER BY epoch DESC LIMIT 1")
        if not epoch:
            raise HTTPException(404, f"no epochs of run {run!r} in the analytics store")
        seeds = data.rows(f"SELECT layer_id, seed_id, argMax(to_state, originator_version) AS state "
                          f"FROM esper.lifecycle_transitions FINAL WHERE run_id = '{run}' GROUP BY layer_id, seed_id")
        active = [s for s in seeds if s["state"] in {st.value for st in IN_PROGRESS}]
        return {"status": "TRAINING" if int(epoch[0]["age_s"]) < 120 else "IDLE", "run_id": run,
                "current_epoch": epoch[0]["epoch"], "validation_accuracy": epoch[0]["val_accuracy"],
                "active_adaptations": len(active),
                "active_seed_id": f"[{active[0]['layer_id']}, {active[0]['seed_id']}]" if active else None}

    @app.get("/api/v1/runs", tags=["nissa"])
    def runs(who: Principal = Depends(reader)) -> list[dict]:
        return data.rows("SELECT run_id, count() AS epochs, argMax(val_accuracy, epoch) AS val_accuracy, "
                         "argMax(params, epoch) AS params, toString(max(occurred_at)) AS last_at "
                         "FROM esper.epochs FINAL GROUP BY run_id ORDER BY max(occurred_at) DESC LIMIT 200")

    @app.get("/api/v1/runs/{run_id}", tags=["nissa"])
    def run_detail(run_id: str, who: Principal = Depends(reader)) -> dict:
        run = run_id_ok(run_id)
        epochs = data.rows(f"SELECT epoch, train_loss, val_loss, val_accuracy, params FROM esper.epochs FINAL "
                           f"WHERE run_id = '{run}' ORDER BY epoch, occurred_at")
        if not epochs:
            raise HTTPException(404, f"no epochs of run {run!r} in the analytics store")
        transitions = data.rows(f"SELECT epoch, layer_id, seed_id, from_state, to_state, kernel_artifact_id, "
                                f"reason FROM esper.lifecycle_transitions FINAL WHERE run_id = '{run}' "
                                f"ORDER BY layer_id, seed_id, originator_version")
        reports = data.rows(f"SELECT seed_id, blueprint_id, outcome, pre_metric, post_metric, reward, "
                            f"kernel_artifact_id FROM esper.field_reports FINAL WHERE run_id = '{run}' "
                            f"ORDER BY occurred_at")
        return {"run_id": run, "epochs": epochs, "transitions": transitions, "field_reports": reports,
                "alerts": evaluate(data, run)}

    @app.get("/api/v1/lineage", tags=["nissa"])
    def lineage(who: Principal = Depends(reader)) -> dict:
        """Karn's family tree: each design Karn made (mutated or written by its generator), its parents, operator,
        depth, Urabrask's verdict on its kernels and its field record (FOSSILIZED / germinated, every run)."""
        from esper_runtime.karn.lineage import family_tree

        return family_tree(data.urza(), data.rows("SELECT blueprint_id, outcome FROM esper.field_reports FINAL"))

    @app.get("/api/v1/alerts", tags=["nissa"])
    def alerts(run_id: str, who: Principal = Depends(reader)) -> list[dict]:
        return evaluate(data, run_id_ok(run_id))

    # ------------------------------------------------------------------ Nissa (static; data via the API above)
    @app.get("/nissa/", include_in_schema=False)
    def nissa_page():
        return FileResponse(NISSA_DIR / "index.html", media_type="text/html")

    @app.get("/nissa/{name}", include_in_schema=False)
    def nissa_asset(name: str):
        if name not in ("nissa.js", "nissa.css"):
            raise HTTPException(404, "no such file")
        return FileResponse(NISSA_DIR / name)

    _document_errors(app)
    return app


class ErrorBody(BaseModel):
    code: int
    message: str


class Error(BaseModel):
    """F.5's error body."""

    error: ErrorBody


_ERRORS = {"400": "the request failed validation", "401": "no bearer token, or one that does not verify",
           "403": "the token lacks the role this needs", "404": "no such item", "413": "the request body is too large"}


def _document_errors(app: FastAPI) -> None:
    """The OpenAPI document says what the app answers: F.5's error body for 400 (FastAPI would say 422, which this
    app never answers), 401, 403, 404 and (for a body) 413."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Error"] = Error.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(components["Error"].pop("$defs", {}))
            for path, ops in schema.get("paths", {}).items():
                for method, op in ops.items():
                    responses = op.setdefault("responses", {})
                    responses.pop("422", None)
                    wanted = ["400", "401", "403", "404"] + (["413"] if method == "post" else [])
                    for code in wanted:
                        responses.setdefault(code, {"description": _ERRORS[code], "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
