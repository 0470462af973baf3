"""The CPU ingress of the Ray Serve app (DESIGN.md §9): the routes every client talks to.

The REST session API and the WebSocket play protocol (:mod:`worldloop.serving.protocol`), KServe v2 /
Open Inference Protocol under ``/v2`` (:mod:`worldloop.serving.inference`), ``/healthz``, the play page
at ``/`` and OpenAPI at ``/docs``. Limits, API keys and JSON errors: :mod:`.middleware`; calls to the
generator: :mod:`.relay`; the application builder: :mod:`worldloop.serving.app`.

No ``from __future__ import annotations`` here: Serve re-wraps the ingress methods, and FastAPI must
resolve their parameter annotations (``Request``, bodies) at import time.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response
from pydantic import TypeAdapter, ValidationError
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from worldloop.serving import protocol as p
from worldloop.serving.contract import ContractApp, api_errors
from worldloop.serving.engine import EngineInfo
from worldloop.serving.frames import ImageError, decode_base64_image, encode_frame, sample_image
from worldloop.serving.inference import WorldloopModel
from worldloop.serving.middleware import install_guards, oip_key, presented_key, validation_message
from worldloop.serving.oip import oip_router
from worldloop.serving.relay import GeneratorRelay
from worldloop.serving.session_db import SessionStore
from worldloop.serving.sessions import ApiError, ApiKeys, SessionRecord
from worldloop.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

WEB = Path(__file__).parent / "web"
MEDIA = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
# What a created session leads to (OpenAPI links: clients and fuzzers follow them).
SESSION_LINKS = {
    name: {"operationId": operation, "parameters": {"session_id": "$response.body#/id"}}
    for name, operation in (
        ("GetSession", "get_session"),
        ("GetLastFrame", "last_frame"),
        ("DeleteSession", "delete_session"),
    )
}
FRAME_RESPONSE = {
    "description": "The session's last frame, in the session's frame format.",
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA.values()},
}
_client_message: TypeAdapter[p.StepMessage | p.PingMessage] = TypeAdapter(p.ClientMessage)

api = ContractApp(
    title="worldloop",
    summary="Interactive game world model: real-time sessions, KServe v2 inference, a play page.",
    version="0.1.0",
)
install_guards(api, max_body_bytes=8 * 1024 * 1024)

# KServe v2 / OIP under /v2. The models come from ``api.state`` as the ingress replica sets it: Serve
# ships ``api`` and the Ingress class to the replica by value, together, so they share that object
# (a module-level registry would not be: the class's copy and the module's would differ; tested).
api.include_router(
    oip_router(lambda: getattr(api.state, "oip_models", {}), server_name="worldloop"),
    dependencies=[Depends(oip_key)],
)


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


def _app_name() -> str:
    """The Serve application this replica belongs to: the scope of its session records."""
    try:
        return serve.get_replica_context().replica_id.deployment_id.app_name
    except RayServeException:  # constructed outside a replica
        return "worldloop"


# -- the ingress deployment -------------------------------------------------------------------------
@serve.ingress(api)
class Ingress:
    """Sessions, play sockets and inference. Session records are in the database (:mod:`.session_db`);
    what stays in this process is which play socket holds each session and which streams it has seen."""

    def __init__(self, generator: DeploymentHandle[Any], overrides: dict[str, Any] | None = None) -> None:
        # This process's environment (the pod's, on a cluster); ``overrides`` replace parts of it (tests).
        settings = Settings(**(overrides or {}))
        self.settings = settings
        self.keys = ApiKeys(settings.serve_api_keys)
        self.store = SessionStore(
            settings.resolved_session_db,
            scope=_app_name(),
            per_owner=settings.serve_sessions_per_key,
            total=settings.serve_max_sessions,
            idle_s=settings.serve_session_idle_s,
        )
        self.relay = GeneratorRelay(generator, resume_timeout_s=settings.serve_resume_timeout_s)
        self._reaper: asyncio.Task[None] | None = None
        self.sockets: dict[str, str] = {}  # session → token of its newest play socket here (it wins)
        # Sessions whose streams this process started or found held. Any other session (after a restart
        # of this replica, or one played through another) is rebuilt from its record on connect: a
        # generator's stream may be a block ahead of the record when an ingress died mid-step.
        self.streams: set[str] = set()
        self.oip_model = WorldloopModel(self.relay)
        api.state.oip_models = {self.oip_model.name: self.oip_model}
        # Serve serves a frozen copy of ``api`` (``self._asgi_app``): request-time code finds this
        # replica's ingress on the app that handles the request.
        served = getattr(self, "_asgi_app", None)
        for app in {id(a): a for a in (api, served) if isinstance(a, FastAPI)}.values():
            app.state.ingress = self

    def owner(self, request: Request) -> str:
        return self.keys.owner(presented_key(request.headers, request.query_params))

    async def engine_info(self) -> EngineInfo:
        return await self.relay.info()

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the session store, off the event loop (a database may make it wait)."""
        if self._reaper is None:  # the first request of this replica starts expiry (it needs a loop)
            self._reaper = asyncio.get_running_loop().create_task(self._expire())
        return await asyncio.to_thread(call, *args)

    def _forget(self, session: str) -> None:
        self.sockets.pop(session, None)  # its socket, if any, is told "session was closed"
        self.streams.discard(session)

    async def _expire(self) -> None:
        period = min(30.0, self.store.idle_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                gone = await asyncio.to_thread(self.store.expired)
            except ApiError as err:  # the database is down: try again next period
                log.warning("session expiry skipped: %s", err.message)
                continue
            for record in gone:
                log.info("session %s expired (idle > %.0f s)", record.id, self.store.idle_s)
                self._forget(record.id)
                with contextlib.suppress(Exception):
                    await self.relay.close(record.id)

    # -- REST ---------------------------------------------------------------------------------------
    @api.post(
        "/v1/sessions",
        operation_id="create_session",
        status_code=201,
        response_model=p.SessionInfo,
        responses={201: {"links": SESSION_LINKS}, **api_errors(400, 413, 429, 503)},
    )
    async def create_session(self, body: p.CreateSession, request: Request) -> p.SessionInfo:
        owner = self.owner(request)
        info = await self.engine_info()
        try:
            pixels = (
                decode_base64_image(body.image)
                if body.image is not None
                else sample_image(info.height, info.width)
            )
        except ImageError as err:
            raise ApiError(400, str(err), field="image") from None
        record = SessionRecord(
            id=self.store.new_id(),
            owner=owner,
            prompt=body.prompt,
            instruction=body.instruction,
            seed=body.seed if body.seed is not None else uuid.uuid4().int % (p.MAX_SEED + 1),
            frames=body.frames,
            model=p.ModelInfo(uri=info.uri, version=info.version, preset=info.preset),
            width=info.width,
            height=info.height,
            fps=info.fps,
            frames_per_block=info.frames_per_block,
        )
        await self._db(self.store.reserve, record)  # 429 over the limits, before any work
        try:
            png = encode_frame(pixels, "png")
            await self.relay.retrying(
                f"session {record.id}", lambda: self.relay.start_stream(record, png, resume=False)
            )
            await self._db(self.store.save, record)  # its first frame: now it can be played
        except BaseException:
            with contextlib.suppress(ApiError):
                await self._db(self.store.remove, record.id)
            raise
        self.streams.add(record.id)
        return record.info(self.store.idle_s)

    @api.get("/v1/sessions", operation_id="list_sessions", response_model=p.SessionList)
    async def list_sessions(self, request: Request) -> p.SessionList:
        owner = self.owner(request)
        owned = await self._db(self.store.owned, owner)
        return p.SessionList(sessions=[r.info(self.store.idle_s) for r in owned])

    @api.get(
        "/v1/sessions/{session_id}",
        operation_id="get_session",
        response_model=p.SessionInfo,
        responses=api_errors(404),
    )
    async def get_session(self, session_id: str, request: Request) -> p.SessionInfo:
        record = await self._db(self.store.get, session_id, self.owner(request))
        return record.info(self.store.idle_s)

    @api.get(
        "/v1/sessions/{session_id}/frame",
        operation_id="last_frame",
        response_class=Response,
        responses={200: FRAME_RESPONSE, **api_errors(404)},
    )
    async def last_frame(self, session_id: str, request: Request) -> Response:
        record = await self._db(self.store.get, session_id, self.owner(request))
        return Response(record.last_frame, media_type=MEDIA[record.frames.format])

    @api.delete(
        "/v1/sessions/{session_id}",
        operation_id="delete_session",
        status_code=204,
        response_class=Response,
        responses=api_errors(404),
    )
    async def delete_session(self, session_id: str, request: Request) -> Response:
        record = await self._db(self.store.get, session_id, self.owner(request))
        await self._db(self.store.remove, record.id)
        self._forget(record.id)
        await self.relay.close(record.id)
        return Response(status_code=204)

    @api.get("/v1/model", operation_id="model_status", response_model=p.ModelStatus)
    async def model_status(self, request: Request) -> p.ModelStatus:
        self.owner(request)
        info, state = await self.engine_info(), await self.relay.follow_state()
        return p.ModelStatus(
            uri=info.uri,
            version=state.version,
            preset=info.preset,
            width=info.width,
            height=info.height,
            fps=info.fps,
            frames_per_block=info.frames_per_block,
            refusals=state.refusals,
            last_refusal=state.last_refusal,
        )

    @api.get("/healthz", include_in_schema=False)
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "sessions": await self._db(self.store.count)}

    # -- WebSocket play ----------------------------------------------------------------------------
    @api.websocket("/v1/sessions/{session_id}/play")
    async def play(self, ws: WebSocket, session_id: str) -> None:
        await ws.accept()
        try:
            owner = self.keys.owner(presented_key(ws.headers, ws.query_params))
        except ApiError as err:
            await ws.close(p.CLOSE_BAD_KEY, err.message)
            return
        try:
            record = await self._db(self.store.get, session_id, owner)
        except ApiError as err:
            if err.status == 404:
                await ws.close(p.CLOSE_UNKNOWN_SESSION, err.message)
            else:
                await self._try_again(ws, err, "session database unavailable")
            return
        token = uuid.uuid4().hex
        self.sockets[record.id] = token  # the newest socket of a session wins; an older one is told so
        try:
            resumed = await self._attach(record)
            record.last_active = time.time()
            if not await self._db(self.store.save, record):  # deleted meanwhile
                self._forget(record.id)
                await ws.close(p.CLOSE_UNKNOWN_SESSION, "session was closed")
                return
        except ApiError as err:
            await self._try_again(ws, err, "generator or session database unavailable")
            return
        hello = p.Hello(
            session=record.info(self.store.idle_s),
            resumed=resumed,
            first_index=record.frame_index,
            format=record.frames.format,
        )
        await ws.send_text(hello.model_dump_json())
        await ws.send_bytes(record.last_frame)
        with contextlib.suppress(WebSocketDisconnect):
            await self._serve_steps(ws, record, token)

    async def _attach(self, record: SessionRecord) -> bool:
        """Make sure a generator holds ``record``'s stream as its record has it; True when rebuilt."""
        if record.id in self.streams:
            resumed = await self.relay.ensure_stream(record)
        else:  # not seen here since this replica started: the record, not the stream, is the truth
            await self.relay.retrying(
                f"session {record.id}",
                lambda: self.relay.start_stream(record, record.last_frame, resume=True),
            )
            resumed = True
        self.streams.add(record.id)
        return resumed

    async def _serve_steps(self, ws: WebSocket, record: SessionRecord, token: str) -> None:
        """Answer ``ws``'s messages until it disconnects, is taken over or the generator stays lost."""
        limit = self.settings.serve_max_message_bytes
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._ws_error(ws, 400, "send JSON text messages (binary messages are not accepted)")
                continue
            if len(text.encode()) > limit:
                await self._ws_error(ws, 413, f"message is over the {limit}-byte limit")
                continue
            try:
                msg = _client_message.validate_json(text)
            except ValidationError as err:
                await self._ws_error(ws, 400, validation_message(err)[0])
                continue
            holder = self.sockets.get(record.id)
            if holder is None:
                await ws.close(p.CLOSE_UNKNOWN_SESSION, "session was closed")
                return
            if holder != token:
                await ws.close(p.CLOSE_TAKEN_OVER, "another socket took over this session")
                return
            if isinstance(msg, p.PingMessage):
                await ws.send_text(p.PongMessage().model_dump_json())
                continue
            try:
                blocks = await self.relay.step(record, msg)
            except ApiError as err:
                await self._try_again(ws, err, "generator unavailable: reconnect to resume")
                return
            # Stored before it is sent: a restarted ingress resumes from what the client may have seen.
            try:
                kept = await self._db(self.store.save, record)
            except ApiError as err:
                self.streams.discard(record.id)  # the stream is ahead of the record: rebuild it on resume
                await self._try_again(ws, err, "session database unavailable: reconnect to resume")
                return
            if not kept:  # deleted or expired by another replica meanwhile
                self._forget(record.id)
                await ws.close(p.CLOSE_UNKNOWN_SESSION, "session was closed")
                return
            for header, frames in blocks:
                await ws.send_text(header.model_dump_json())
                for frame in frames:
                    await ws.send_bytes(frame)

    async def _ws_error(self, ws: WebSocket, status: int, message: str) -> None:
        await ws.send_text(p.ErrorMessage(status=status, message=message).model_dump_json())

    async def _try_again(self, ws: WebSocket, err: ApiError, reason: str) -> None:
        """The generator stayed lost: say so, and close with 1013 (reconnecting resumes the session)."""
        await ws.send_text(
            p.ErrorMessage(status=err.status, message=err.message, retry=True).model_dump_json()
        )
        await ws.close(p.CLOSE_TRY_AGAIN, reason)
