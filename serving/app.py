"""The Ray Serve application: a CPU ingress (FastAPI) in front of the generator (DESIGN.md §9).

``build_app`` is the application builder every launcher uses — ``worldloop serve run``, ``serve run
worldloop.serving.app:build_app model=... sp=2`` and the KubeRay ``RayService`` (``import_path:
worldloop.serving.app:build_app`` with ``args``) — so a cluster runs exactly what runs locally.

Ingress routes: the REST session API and the WebSocket play protocol (:mod:`worldloop.serving.protocol`),
KServe v2 / Open Inference Protocol under ``/v2`` (:mod:`worldloop.serving.inference`), the play page at
``/`` and OpenAPI at ``/docs``. Every error is JSON with a 4xx status unless the server itself failed.

No ``from __future__ import annotations`` here: Serve re-wraps the ingress methods, and FastAPI must
resolve their parameter annotations (``Request``, bodies) at import time.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import ray.exceptions
from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from worldloop.serving import protocol as p
from worldloop.serving.engine import EngineConfig, SessionNotFound
from worldloop.serving.generator import Generator
from worldloop.serving.images import ImageError, decode_base64_image, encode_frame, sample_image
from worldloop.serving.oip import oip_router
from worldloop.serving.sessions import ApiError, ApiKeys, SessionRecord, SessionStore

from worldloop.settings import Settings

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
MAX_STREAMS_HINT = 16  # concurrent sessions a generator replica expects; sizes its request queue
MEDIA = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
# The generator's replica went away (killed, node lost, restarting): the session is rebuilt elsewhere.
LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
_client_message: TypeAdapter[p.StepMessage | p.PingMessage] = TypeAdapter(p.ClientMessage)


# -- errors and limits ----------------------------------------------------------------------------
def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _validation_message(err: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    if first.get("type") in ("json_invalid", "json_type"):
        return f"body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})", None
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
    return (f"{where}: {first['msg']}" if where else str(first["msg"])), where


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for request bodies over the limit, by header or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ingress = getattr(scope["app"].state, "ingress", None) if "app" in scope else None
        limit = ingress.settings.serve_max_body_bytes if ingress is not None else self.limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, f"request body is over the {limit}-byte limit")(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await error_response(413, f"request body is over the {limit}-byte limit")(
                    scope, receive, send
                )


api = FastAPI(
    title="worldloop",
    summary="Interactive game world model: real-time sessions, KServe v2 inference, a play page.",
    version="0.1.0",
)
api.add_middleware(BodyLimit, limit=8 * 1024 * 1024)


def _oip_key(request: Request) -> None:
    """API keys on ``/v2`` too, except the health probes and server metadata (Kubernetes probes them)."""
    ingress = getattr(request.app.state, "ingress", None)
    keys: ApiKeys | None = None if ingress is None else ingress.keys
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    if keys is not None and not path.startswith("/v2/health") and path != "/v2":
        try:
            keys.owner(_presented_key(request.headers, request.query_params))
        except ApiError as err:
            raise StarletteHTTPException(err.status, err.message) from None


# KServe v2 / OIP under /v2. The models come from ``api.state`` as the ingress replica sets it: Serve
# ships ``api`` and the Ingress class to the replica by value, together, so they share that object
# (a module-level registry would not be: the class's copy and the module's would differ; tested).
api.include_router(
    oip_router(lambda: getattr(api.state, "oip_models", {}), server_name="worldloop"),
    dependencies=[Depends(_oip_key)],
)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return error_response(err.status, err.message, err.field)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    message, where = _validation_message(err)
    return error_response(400, message, where)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail))


# -- static page (declared before ``serve.ingress``, which freezes a copy of ``api``) ----------------
@api.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html")


def _asset_route(path: Path) -> None:
    media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}.get(path.suffix)

    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media)

    api.add_api_route(f"/{path.name}", asset, methods=["GET"], include_in_schema=False)


for _file in sorted(WEB.glob("*")) if WEB.is_dir() else []:
    if _file.is_file() and _file.name != "index.html":
        _asset_route(_file)


# -- the ingress deployment -------------------------------------------------------------------------
def _presented_key(headers: Any, query: Any) -> str | None:
    auth = headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return str(auth[7:])
    return headers.get("x-api-key") or query.get("api_key")


@serve.ingress(api)
class Ingress:
    """Sessions, play sockets and inference; holds the session records (see :mod:`.sessions`)."""

    def __init__(
        self, generator: DeploymentHandle, engine: dict[str, Any], overrides: dict[str, Any] | None = None
    ) -> None:
        # This process's environment (the pod's, on a cluster); ``overrides`` replace parts of it (tests).
        settings = Settings(**(overrides or {}))
        self.settings = settings
        self.generator = generator
        self.keys = ApiKeys(settings.serve_api_keys)
        self.store = SessionStore(
            per_owner=settings.serve_sessions_per_key,
            total=settings.serve_max_sessions,
            idle_s=settings.serve_session_idle_s,
        )
        self.engine_cfg = EngineConfig.model_validate(engine)
        self._engine_info: dict[str, Any] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.generator_ok = True  # False from a call that found the generator gone until one succeeds
        from worldloop.serving.inference import WorldloopModel

        self.oip_model = WorldloopModel(self)
        api.state.oip_models = {self.oip_model.name: self.oip_model}
        # Serve serves a frozen copy of ``api`` (``self._asgi_app``): request-time code finds this
        # replica's ingress on the app that handles the request.
        served = getattr(self, "_asgi_app", None)
        for app in {id(a): a for a in (api, served) if isinstance(a, FastAPI)}.values():
            app.state.ingress = self

    # -- helpers ------------------------------------------------------------------------------------
    def owner(self, request: Request) -> str:
        return self.keys.owner(_presented_key(request.headers, request.query_params))

    def _gen(self, session: str) -> DeploymentHandle:
        return self.generator.options(multiplexed_model_id=session)

    async def engine_info(self) -> dict[str, Any]:
        if self._engine_info is None:
            self._engine_info = await self.generator.info.remote()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._expire())
        return self._engine_info

    async def _expire(self) -> None:
        period = min(30.0, self.store.idle_s / 4)
        while True:
            await asyncio.sleep(period)
            for record in self.store.expired():
                log.info("session %s expired (idle > %.0f s)", record.id, self.store.idle_s)
                with contextlib.suppress(Exception):
                    await self._gen(record.id).close.remote(record.id)

    async def _retrying(self, what: str, call: Any) -> Any:
        """Run ``call()`` until it stops failing with a lost replica, up to the resume timeout (503)."""
        deadline = time.monotonic() + self.settings.serve_resume_timeout_s
        delay = 0.25
        while True:
            try:
                result = await call()
                self.generator_ok = True
                return result
            except LOST as err:
                self.generator_ok = False
                if time.monotonic() > deadline:
                    raise ApiError(
                        503, f"{what}: the generator is unavailable ({type(err).__name__})"
                    ) from err
                log.warning("%s: generator replica lost (%s); retrying", what, type(err).__name__)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def start_stream(self, record: SessionRecord, image: bytes, *, resume: bool) -> dict[str, Any]:
        seed = (record.seed + record.blocks) % 2**63  # a rebuilt stream draws fresh noise
        out: dict[str, Any] = await self._gen(record.id).start.remote(
            record.id,
            image=image,
            prompt=record.prompt,
            instruction=record.instruction,
            seed=seed,
            frame_index=record.frame_index,
            blocks=record.blocks,
            fmt=record.frames.format,
            quality=record.frames.quality,
        )
        record.model = record.model.model_copy(update={"version": out.get("version")})
        if resume:
            record.resumes += 1
        else:
            record.last_frame = out["frames"][-1]
        return out

    async def ensure_stream(self, record: SessionRecord) -> bool:
        """Make sure a generator replica holds ``record``'s stream; True when it had to be rebuilt."""

        async def attempt() -> bool:
            if await self._gen(record.id).holds.remote(record.id):
                return False
            await self.start_stream(record, record.last_frame, resume=True)
            return True

        resumed: bool = await self._retrying(f"session {record.id}", attempt)
        return resumed

    async def step(
        self, record: SessionRecord, msg: p.StepMessage
    ) -> list[tuple[p.BlockMessage, list[bytes]]]:
        """Generate ``msg.blocks`` blocks, rebuilding the stream once if the generator lost it."""
        out = []
        for i in range(msg.blocks):
            text = msg.text if i == 0 else None
            share = (msg.mouse[0] / msg.blocks, msg.mouse[1] / msg.blocks)
            t0 = time.perf_counter()

            async def call(text: str | None = text, share: tuple[float, float] = share) -> dict[str, Any]:
                try:
                    result: dict[str, Any] = await self._gen(record.id).step.remote(
                        record.id,
                        keys=[k.value for k in msg.keys],
                        mouse=share,
                        text=text,
                        fmt=record.frames.format,
                        quality=record.frames.quality,
                    )
                    return result
                except SessionNotFound:
                    await self.start_stream(record, record.last_frame, resume=True)
                    raise

            try:
                block = await self._retrying(f"session {record.id}", call)
            except SessionNotFound:  # rebuilt just now: run the block on the new stream
                block = await self._retrying(f"session {record.id}", call)
            total = (time.perf_counter() - t0) * 1000.0
            frames: list[bytes] = block["frames"]
            record.frame_index = block["first_index"] + len(frames) - 1
            record.blocks = block["block"]
            record.last_frame = frames[-1]
            record.last_active = time.time()
            if block["recached"]:
                record.recaches += 1
            record.instruction = block["instruction"]
            work = block["generate_ms"] + block["decode_ms"] + block["encode_ms"]
            header = p.BlockMessage(
                block=block["block"],
                first_index=block["first_index"],
                count=len(frames),
                format=record.frames.format,
                recached=block["recached"],
                instruction=block["instruction"],
                timing=p.Timing(
                    queue_ms=max(0.0, total - work),
                    generate_ms=block["generate_ms"],
                    decode_ms=block["decode_ms"],
                    encode_ms=block["encode_ms"],
                    total_ms=total,
                ),
            )
            out.append((header, frames))
        return out

    # -- REST ---------------------------------------------------------------------------------------
    @api.post("/v1/sessions", status_code=201, response_model=p.SessionInfo)
    async def create_session(self, body: p.CreateSession, request: Request) -> p.SessionInfo:
        owner = self.owner(request)
        info = await self.engine_info()
        try:
            pixels = (
                decode_base64_image(body.image)
                if body.image is not None
                else sample_image(info["height"], info["width"])
            )
        except ImageError as err:
            raise ApiError(400, str(err), field="image") from None
        record = SessionRecord(
            id=self.store.new_id(),
            owner=owner,
            prompt=body.prompt,
            instruction=body.instruction,
            seed=body.seed if body.seed is not None else uuid.uuid4().int % 2**63,
            frames=body.frames,
            model=p.ModelInfo(uri=info["uri"], version=info["version"], preset=info["preset"]),
            width=info["width"],
            height=info["height"],
            fps=info["fps"],
            frames_per_block=info["frames_per_block"],
        )
        self.store.reserve(record)  # 429 over the limits, before any work
        try:
            png = encode_frame(pixels, "png")
            await self._retrying(f"session {record.id}", lambda: self.start_stream(record, png, resume=False))
        except BaseException:
            self.store.remove(record.id)
            raise
        return record.info(self.store.idle_s)

    @api.get("/v1/sessions", response_model=p.SessionList)
    async def list_sessions(self, request: Request) -> p.SessionList:
        owner = self.owner(request)
        return p.SessionList(sessions=[r.info(self.store.idle_s) for r in self.store.owned(owner)])

    @api.get("/v1/sessions/{session_id}", response_model=p.SessionInfo)
    async def get_session(self, session_id: str, request: Request) -> p.SessionInfo:
        return self.store.get(session_id, self.owner(request)).info(self.store.idle_s)

    @api.get("/v1/sessions/{session_id}/frame", response_class=Response)
    async def last_frame(self, session_id: str, request: Request) -> Response:
        record = self.store.get(session_id, self.owner(request))
        return Response(record.last_frame, media_type=MEDIA[record.frames.format])

    @api.delete("/v1/sessions/{session_id}", status_code=204, response_class=Response)
    async def delete_session(self, session_id: str, request: Request) -> Response:
        record = self.store.get(session_id, self.owner(request))
        self.store.remove(record.id)
        with contextlib.suppress(*LOST):
            await self._gen(record.id).close.remote(record.id)
        return Response(status_code=204)

    @api.get("/healthz", include_in_schema=False)
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "sessions": len(self.store)}

    # -- WebSocket play ----------------------------------------------------------------------------
    @api.websocket("/v1/sessions/{session_id}/play")
    async def play(self, ws: WebSocket, session_id: str) -> None:
        await ws.accept()
        try:
            owner = self.keys.owner(_presented_key(ws.headers, ws.query_params))
        except ApiError as err:
            await ws.close(p.CLOSE_BAD_KEY, err.message)
            return
        try:
            record = self.store.get(session_id, owner)
        except ApiError as err:
            await ws.close(p.CLOSE_UNKNOWN_SESSION, err.message)
            return
        token = uuid.uuid4().hex
        record.socket = token  # the newest socket of a session wins; an older one is told so
        try:
            resumed = await self.ensure_stream(record)
        except ApiError as err:
            await ws.send_text(
                p.ErrorMessage(status=err.status, message=err.message, retry=True).model_dump_json()
            )
            await ws.close(p.CLOSE_TRY_AGAIN, "generator unavailable")
            return
        record.last_active = time.time()
        hello = p.Hello(
            session=record.info(self.store.idle_s),
            resumed=resumed,
            first_index=record.frame_index,
            format=record.frames.format,
        )
        await ws.send_text(hello.model_dump_json())
        await ws.send_bytes(record.last_frame)
        limit = self.settings.serve_max_message_bytes
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self._ws_error(
                        ws, 400, "send JSON text messages (binary messages are not accepted)"
                    )
                    continue
                if len(text.encode()) > limit:
                    await self._ws_error(ws, 413, f"message is over the {limit}-byte limit")
                    continue
                try:
                    msg = _client_message.validate_json(text)
                except ValidationError as err:
                    await self._ws_error(ws, 400, _validation_message(err)[0])
                    continue
                if self.store._records.get(record.id) is not record:
                    await ws.close(p.CLOSE_UNKNOWN_SESSION, "session was closed")
                    return
                if record.socket != token:
                    await ws.close(p.CLOSE_TAKEN_OVER, "another socket took over this session")
                    return
                if isinstance(msg, p.PingMessage):
                    await ws.send_text(p.PongMessage().model_dump_json())
                    continue
                try:
                    blocks = await self.step(record, msg)
                except ApiError as err:
                    await ws.send_text(
                        p.ErrorMessage(status=err.status, message=err.message, retry=True).model_dump_json()
                    )
                    await ws.close(p.CLOSE_TRY_AGAIN, "generator unavailable: reconnect to resume")
                    return
                for header, frames in blocks:
                    await ws.send_text(header.model_dump_json())
                    for frame in frames:
                        await ws.send_bytes(frame)
        except WebSocketDisconnect:
            return

    async def _ws_error(self, ws: WebSocket, status: int, message: str) -> None:
        await ws.send_text(p.ErrorMessage(status=status, message=message).model_dump_json())


# -- the application builder ------------------------------------------------------------------------
class ServeOptions(EngineConfig):
    """``build_app`` arguments: the engine's plus replica/placement settings (strings are coerced)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(1, ge=1, description="Generator replicas (the minimum when autoscaling).")
    max_replicas: int | None = Field(None, ge=1, description="Autoscale up to this many replicas.")
    sessions_per_replica: int = Field(
        4, ge=1, description="Autoscaling target: concurrent sessions' requests per replica."
    )
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs reserved per worker (default: 1 when device=cuda, else 0)."
    )
    ingress_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the ingress replica.")
    poll_s: float = Field(30.0, gt=0, description="Registry polling period for models:/NAME@ALIAS.")
    name: Literal["worldloop"] = "worldloop"


def deployment_options(opts: ServeOptions) -> dict[str, Any]:
    """The generator's Ray Serve options: one device per worker, N workers packed on one node."""
    gpus = (
        opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if opts.device == "cuda" else 0.0)
    )
    options: dict[str, Any] = {
        "max_ongoing_requests": 4 * MAX_STREAMS_HINT,
        "health_check_period_s": 10,
        "health_check_timeout_s": 120,
        "graceful_shutdown_timeout_s": 10,
    }
    if opts.max_replicas is not None and opts.max_replicas > opts.replicas:
        options["autoscaling_config"] = {
            "min_replicas": opts.replicas,
            "max_replicas": opts.max_replicas,
            "target_ongoing_requests": opts.sessions_per_replica,
        }
    else:
        options["num_replicas"] = opts.replicas
    if opts.sp == 1:
        options["ray_actor_options"] = {"num_cpus": 1, "num_gpus": gpus}
    else:  # bundle 0: the replica (CPU); bundles 1..N: the sequence-parallel workers, one device each
        worker: dict[str, float] = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
        options["ray_actor_options"] = {"num_cpus": 0.5}
        options["placement_group_bundles"] = [{"CPU": 0.5}] + [worker] * opts.sp
        options["placement_group_strategy"] = "STRICT_PACK"
    return options


def build_app(args: dict[str, Any], *, settings: dict[str, Any] | None = None) -> serve.Application:
    """Ray Serve application builder: ``args`` are :class:`ServeOptions` fields (e.g. from serveConfigV2).

    ``settings`` overrides the ingress's :class:`~worldloop.settings.Settings` (tests); deployments take
    them from the environment, so API keys never travel in a serve config.
    """
    try:
        opts = ServeOptions.model_validate(args)
    except ValidationError as err:
        raise ValueError(f"worldloop serve arguments: {err}") from None
    engine = EngineConfig.model_validate(opts.model_dump(include=set(EngineConfig.model_fields))).model_dump()
    generator = serve.deployment(name="Generator", **deployment_options(opts))(Generator)
    ingress = serve.deployment(
        name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": opts.ingress_cpus}
    )(Ingress)
    return ingress.bind(generator.bind(engine, opts.poll_s), engine, settings)
