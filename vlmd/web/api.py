"""The HTTP and WebSocket API: `build_app` returns the Starlette app the daemon serves.

Writes need ``Authorization: Bearer <token>``; reads are open (vlmd binds loopback by default)
unless ``server.read_token`` puts them behind the read token (the dashboard's static files stay
public; WebSockets and links may pass it as ``?token=``). Who may do what: `vlmd.web.auth`.
Every user mistake is a 4xx with a JSON ``{"error": ...}`` that says what is wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from vlmd.config import ServerConfig
from vlmd.launch import submit
from vlmd.launch.launcher import Launcher, LaunchError, LaunchSpec
from vlmd.live.state import Live, WriteRefused
from vlmd.projections import answers
from vlmd.projections.tracker import AmbiguousName, RunState
from vlmd.store import incoming
from vlmd.tokens import Tokens
from vlmd.web import bulk, images, replays
from vlmd.web.auth import ApiError, Auth
from vlmd.web.comparisons import Comparisons
from vlmd.web.feeds import MAX_KINDS, MAX_SEQ, Feeds
from vlmd.web.metrics import route as metrics_route
from vlmd.web.origins import Origins, guard
from vlmd.web.wsstream import WS_POLICY, WsHub, close_reason
from vlmd_agent import wire
from vlmd_agent.catalog import RunSubmitted

UI_DIR = Path(__file__).parent / "ui"
MAX_ERRORS_SHOWN = 20
DRAIN_FACTOR = 4  # bodies up to this many times the cap are read (and dropped) before a 413


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


class _FeedAfter(Response):
    """`_json(data)` for a POST of events whose feed frames `Live.append` held: they are
    published once the answer is sent (or failed to be), so the client's next POST overlaps
    the sends."""

    def __init__(self, live: Live, data: Any) -> None:
        super().__init__(orjson.dumps(data), media_type="application/json")
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.live.release_feed()


def _error(exc: ApiError) -> Response:
    return _json({"error": exc.message, **exc.extra}, exc.status)


class Api:
    """The request handlers, over one `Live` state."""

    def __init__(self, live: Live, auth: Auth, max_body: int) -> None:
        self.live = live
        self.auth = auth
        self.max_body = max_body
        self.launcher: Launcher | None = None
        self.reader = bulk.Reader(live.log)
        self.images = images.ImageIndexes()

    async def read_body(self, request: Request) -> bytes:
        """The body, at most `max_body` bytes (else 413).

        A body up to `DRAIN_FACTOR` times the cap is read to its end and dropped before the
        413, so the client sees the answer (an agent then halves its batch) instead of a reset
        connection; a bigger one is cut off at once.
        """
        length = request.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise ApiError(400, f"bad Content-Length {length[:40]!r}")
            if int(length) > DRAIN_FACTOR * self.max_body:
                raise ApiError(413, f"request body of {length} bytes is over the "
                                    f"{self.max_body}-byte limit; send smaller batches")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size <= self.max_body:
                    chunks.append(chunk)
                elif size > DRAIN_FACTOR * self.max_body:
                    break
        except ClientDisconnect:  # nobody is left to answer; nothing was read into the log
            raise ApiError(400, "the client left before sending the whole body") from None
        if size > self.max_body:
            raise ApiError(413, f"request body is over the {self.max_body}-byte limit; "
                                "send smaller batches")
        return b"".join(chunks)

    def find(self, run: str) -> RunState | None:
        """The run of that id or name, else None; a name several runs share is a 409 that
        lists them."""
        try:
            return self.live.tracker.find(run)
        except AmbiguousName as e:
            raise ApiError(409, str(e), runs=e.runs) from None

    def run_state(self, run: str) -> RunState:
        state = self.find(run)
        if state is None:
            raise ApiError(404, f"no run {run[:200]!r} (neither an id nor a name in the log)")
        return state

    async def post_events(self, request: Request) -> Response:
        grant = self.auth.authorize_events(request)
        raw = await self.read_body(request)
        try:
            batch = incoming.decode(raw)
        except incoming.Invalid as e:
            if e.not_json is not None:
                raise ApiError(400, e.not_json) from None
            errors = e.errors
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ApiError(422, f"{errors[0]}{more}; nothing was appended", errors=[
                {"index": e.index, "field": e.field, "message": e.message}
                for e in errors[:MAX_ERRORS_SHOWN]]) from None
        self.auth.check_batch(grant, batch)
        done = await self.live.append(batch, hold_feed=True)
        return _FeedAfter(self.live, {"appended": len(done.events), "duplicates": done.duplicates,
                                      "last_seq": done.last_seq})

    async def submit_run(self, request: Request) -> Response:
        self.auth.authorize(request)
        if self.launcher is None:
            raise ApiError(503, "this vlmd has no launcher; start agents yourself")
        try:
            spec = submit.parse(orjson.loads(await self.read_body(request)))
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        except submit.SubmitError as e:
            raise ApiError(422, str(e)) from None
        except (OSError, RuntimeError) as e:  # a path too long, "~nobody" (no such home)
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise ApiError(422, f"dataset: cannot use that path ({why})") from None
        try:
            checked = await trio.to_thread.run_sync(submit.preflight, spec)
        except submit.SubmitError as e:
            raise ApiError(422, str(e)) from None
        name = spec.options.get("name")
        event = submit.submitted_event(spec, checked)
        event["body"]["config"]["launcher"] = self.launcher.kind
        await self.live.append([event])
        await self.launcher.launch(spec)
        return _json({"run": spec.run, "name": name, "status": "submitted",
                      "shards": spec.shards, "head": self.live.head}, 201)

    async def cancel_run(self, request: Request) -> Response:
        self.auth.authorize(request)
        state = self.run_state(request.path_params["run"])
        if state.status in ("finished", "failed", "cancelled"):
            raise ApiError(409, f"run {state.run} is already {state.status}")
        try:
            stopped = await self.launcher.cancel(state.run) if self.launcher else 0
        except LaunchError as e:
            raise ApiError(502, f"cannot stop the run's agents: {e}") from None
        # a fresh key: a run resumed after a cancel can be cancelled again
        await self.live.append([wire.envelope(state.run, "run.cancelled",
                                              {"reason": "cancelled by the user"})])
        return _json({"run": state.run, "status": "cancelled", "agents_stopped": stopped})

    async def resume_run(self, request: Request) -> Response:
        """Start the shards of a run that did not finish again; they skip completed items."""
        self.auth.authorize(request)
        state = self.run_state(request.path_params["run"])
        if self.launcher is None:
            raise ApiError(503, "this vlmd has no launcher; start agents yourself")
        log, query = self.live.log, bulk.Query(0, self.live.head, state.run, ("run.submitted",))
        submitted = await self.reader.run_sync(lambda: bulk.read_chunk(log, query, 1))
        if not submitted:
            raise ApiError(409, f"run {state.run} was not submitted through vlmd; "
                                "restart its agents where they ran")
        try:  # checked as a new submission is: the log holds what any writer put there
            spec = submit.resubmission(state.run, orjson.loads(submitted[0].body_json))
        except (submit.SubmitError, OSError, RuntimeError) as e:
            raise ApiError(422, f"run {state.run}: its submission cannot be started again: "
                                f"{e}") from None
        try:
            await trio.to_thread.run_sync(submit.check_unchanged, spec.dataset,
                                          state.dataset_sha256)
        except submit.SubmitError as e:
            raise ApiError(409, f"run {state.run}: {e}") from None
        todo = [i for i in range(spec.shards)
                if state.shards.get(f"{i}/{spec.shards}") != "finished"]
        if not todo:
            raise ApiError(409, f"run {state.run}: every shard has finished")
        try:
            started = await self.launcher.resume(spec, todo)
        except LaunchError as e:
            raise ApiError(502, f"cannot resume run {state.run}: {e}") from None
        if not started:
            raise ApiError(409, f"run {state.run}: its unfinished shards are still running")
        return _json({"run": state.run, "status": "resumed",
                      "shards": [f"{i}/{spec.shards}" for i in started], "head": self.live.head})

    async def list_runs(self, request: Request) -> Response:
        runs = [state.to_dict() for state in self.live.tracker.runs.values()]
        return _json({"last_seq": self.live.head, "runs": runs})

    async def get_run(self, request: Request) -> Response:
        state = self.run_state(request.path_params["run"])
        return _json({**state.to_dict(), "summary": self.live.summaries.get(state),
                      "head": self.live.head})

    async def item_image(self, request: Request) -> Response:
        """An item's image (``?n=`` picks one of several, from 0), read as the run's agents
        read the dataset (with the run's ``--columns``)."""
        state = self.run_state(request.path_params["run"])
        n = request.query_params.get("n", "0")
        if not n.isdigit() or len(n) > 3:
            raise ApiError(400, f"n must be an image number from 0, not {n[:40]!r}")
        log, item = self.live.log, request.path_params["item"]
        query = bulk.Query(0, self.live.head, state.run, ("run.submitted",))

        def image() -> tuple[bytes, str]:  # the dataset is read once, when first asked
            submitted = bulk.read_chunk(log, query, 1, typed=True)
            columns = (LaunchSpec.from_submitted(state.run, submitted[0].body).columns
                       if submitted and isinstance(submitted[0].body, RunSubmitted) else None)
            return self.images.item_image(state.dataset, item, int(n), columns)

        try:
            data, mime = await self.reader.run_sync(image)
        except images.ImageNotFound as e:
            raise ApiError(404, str(e)) from None
        return Response(data, media_type=mime, headers={"cache-control": "max-age=3600"})

    async def run_items(self, request: Request) -> Response:
        state = self.run_state(request.path_params["run"])
        status = request.query_params.get("status", "all")
        wanted = {"completed": (True,), "failed": (False,), "all": (True, False)}.get(status)
        if wanted is None:
            raise ApiError(400, f"status must be completed, failed or all, not {status[:40]!r}")
        return _json({"run": state.run, "status": status,
                      "items": [i for i, r in state.items.items() if r.ok in wanted]})

    async def answers_csv(self, request: Request) -> Response:
        """The run's answers.csv; ``?escape=no`` leaves cells that would start a spreadsheet
        formula as they are (by default they get a leading ``'``)."""
        state = self.run_state(request.path_params["run"])
        escape = request.query_params.get("escape", "yes")
        if escape not in ("yes", "no"):
            raise ApiError(400, f"escape must be yes or no, not {escape[:40]!r}")
        log = self.live.log

        def rows() -> list[answers.Row]:
            return list(answers.fold(log.read(run=state.run, kinds=answers.ITEM_KINDS)).values())

        folded = await self.reader.run_sync(rows)
        return StreamingResponse(answers.csv_chunks(folded, escape=escape == "yes"),
                                 media_type="text/csv; charset=utf-8",
                                 headers={"content-disposition":
                                          f'attachment; filename="{state.run}-answers.csv"'})

    async def list_events(self, request: Request) -> Response:
        """At most ``limit`` events (10,000 by default, `bulk.MAX_EVENTS` at most) and about
        `bulk.MAX_BYTES` of them, streamed: page on with ``after=`` the last seq received."""
        q = request.query_params
        try:
            after = int(q.get("after", "0"))
            limit = min(int(q.get("limit", "10000")), bulk.MAX_EVENTS)
        except ValueError:
            raise ApiError(400, "after and limit must be integers") from None
        if not 0 <= after <= MAX_SEQ or limit < 1:
            raise ApiError(400, f"after must be from 0 to {MAX_SEQ} and limit >= 1")
        run = q.get("run") or None
        if run is not None:
            found = self.find(run)
            run = found.run if found else run
        kinds = q.getlist("kind") or None
        if kinds is not None and len(kinds) > MAX_KINDS:
            raise ApiError(400, f"at most {MAX_KINDS} kind filters, not {len(kinds)}")
        query = bulk.Query(after, self.live.head, run, bulk.kinds_tuple(kinds))
        return StreamingResponse(self.reader.json_array(query, limit),
                                 media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        """Open to all (probes, `vlmd run`); with ``read_token`` the details need the token.
        ``ok`` is false while the log refuses writes, and ``write_error`` says why."""
        health = {"ok": self.live.write_error is None, "write_error": self.live.write_error}
        try:
            self.auth.authorize_read(request)
        except ApiError:
            return _json(health)
        return _json({**health, "last_seq": self.live.head,
                      "runs": len(self.live.tracker.runs),
                      "feed_clients": len(self.live.feed.subscribers),
                      "datasette_url": self.live.datasette_url,
                      "log_warning": self.live.log_warning,
                      "uptime_s": time.time() - self.live.started_at})

    async def state_at(self, request: Request) -> Response:
        """``GET /api/runs/{run}/state?at=SEQ|ts=TIME``: the run folded from its own events up
        to that position (default: all), as one replay message (`vlmd.live.replay`)."""
        state = self.run_state(request.path_params["run"])
        q = request.query_params
        try:
            seq = int(q["at"]) if "at" in q else None
            ts = float(q["ts"]) if "ts" in q else None
        except ValueError:
            raise ApiError(400, "at must be an integer seq and ts a number of seconds") from None
        if seq is not None and not 0 <= seq <= MAX_SEQ:
            raise ApiError(400, f"at must be from 0 to {MAX_SEQ}")
        if ts is not None and not math.isfinite(ts):
            raise ApiError(400, "ts must be a finite number of seconds")
        log, head = self.live.log, self.live.head
        return _json(await self.reader.run_sync(
            lambda: replays.position(log, state.run, seq, ts, head)))


Handler = Callable[[Request], Awaitable[Response]]
WsHandler = Callable[[WebSocket], Awaitable[None]]


def _guard(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return _error(e)
        except WriteRefused as e:
            return _error(ApiError(e.status, f"{e.message}; nothing was appended"))
    return guarded


def _read_run(api: Api, conn: HTTPConnection, run: str | None) -> str | None:
    """The id of the run a read is about (`run` may be its name), for a run token's check."""
    found = None if run is None or api.auth.reads_open else api.find(run)
    return found.run if found is not None else run


def _reads(api: Api, handler: Handler, *, query: bool = False) -> Handler:
    """`handler` behind `Auth.authorize_read` (for the run in its path, if any), guarded;
    `query` also takes ``?token=`` (links a browser follows without headers: answers.csv,
    item images)."""
    async def checked(request: Request) -> Response:
        run = _read_run(api, request, request.path_params.get("run"))
        api.auth.authorize_read(request, query=query, run=run)
        return await handler(request)
    return _guard(checked)


def _ws_reads(api: Api, handler: WsHandler) -> WsHandler:
    """A WebSocket `handler` behind `Auth.authorize_read` (header or ``?token=``; for the run
    it asks for, if any); a refused client is accepted and closed with 1008 and the reason,
    which browsers can show."""
    async def checked(ws: WebSocket) -> None:
        try:
            run = _read_run(api, ws, ws.query_params.get("run") or None)
            api.auth.authorize_read(ws, query=True, run=run)
        except ApiError as e:
            await ws.accept()
            await ws.close(WS_POLICY, close_reason(e.message))
            return
        await handler(ws)
    return checked


def build_app(live: Live, tokens: Tokens, server: ServerConfig, *,
              launcher: Launcher | None = None, origins: Origins | None = None) -> ASGIApp:
    """The app over `live`; who may do what is `tokens`' (`vlmd.web.auth`); requests for
    other host names or from other origins than `origins` allows are refused
    (`vlmd.web.origins`); the ``[server]`` limits apply; submitted runs are started by
    `launcher` (without one, submissions are refused)."""
    api = Api(live, Auth(tokens), int(server.max_body_mb * 1024 * 1024))
    api.launcher = launcher
    feeds = Feeds(live, WsHub(server.max_ws_clients), api.reader)
    comparisons = Comparisons(live, api.reader, api.run_state)
    routes = [
        Route("/api/events", _guard(api.post_events), methods=["POST"]),
        Route("/events", _guard(api.post_events), methods=["POST"]),
        Route("/api/runs", _reads(api, api.list_runs), methods=["GET"]),
        Route("/api/runs", _guard(api.submit_run), methods=["POST"]),
        Route("/api/runs/{run}/cancel", _guard(api.cancel_run), methods=["POST"]),
        Route("/api/runs/{run}/resume", _guard(api.resume_run), methods=["POST"]),
        Route("/api/runs/{run}", _reads(api, api.get_run), methods=["GET"]),
        Route("/api/runs/{run}/items", _reads(api, api.run_items), methods=["GET"]),
        Route("/api/runs/{run}/answers.csv", _reads(api, api.answers_csv, query=True),
              methods=["GET"]),
        Route("/api/runs/{run}/items/{item:path}/image", _reads(api, api.item_image, query=True),
              methods=["GET"]),
        Route("/api/events", _reads(api, api.list_events), methods=["GET"]),
        Route("/healthz", _guard(api.healthz), methods=["GET"]),
        Route("/metrics", _reads(api, metrics_route(live)), methods=["GET"]),
        Route("/api/runs/{run}/state", _reads(api, api.state_at), methods=["GET"]),
        Route("/api/compare", _reads(api, comparisons.compare), methods=["GET"]),
        Route("/api/diff", _reads(api, comparisons.diff), methods=["GET"]),
        WebSocketRoute("/api/replay", _ws_reads(api, feeds.replay)),
        WebSocketRoute("/api/feed", _ws_reads(api, feeds.feed)),
        WebSocketRoute("/api/state", _ws_reads(api, feeds.state)),
        Mount("/", StaticFiles(directory=UI_DIR, html=True), name="ui"),
    ]
    return guard(Starlette(routes=routes), origins or Origins())
