"""AgentRuntime: everything one agent owns, driven by an event loop on the agent's main thread.

The runtime owns the memory store, the state, the model, the plugins' actions, providers,
evaluators and services, and the stats. It takes items from the bounded inbox one at a time
(so each delivered message goes through the pipeline once, in order) and sends through the
transport, which runs in its own thread: nothing the runtime does, not even a handler that
blocks, delays an ack or a heartbeat.

Message pipeline: store it -> compose State from the providers -> the model decides the reply
and the actions -> for each action: validate, run the handler (with a timeout), record the
result -> send the reply -> run the evaluators. Every action emits `action.started` and then
`action.completed` or `action.failed` to the coordinator.

Sync plugin functions run in a small thread pool so their timeout can be enforced (a sync
handler that overruns is reported as timed out; its thread is left to finish on its own, since
Python cannot kill a thread); the runtime methods they call (`send`, `set_state`, `memory`) are
thread-safe for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import errno
import functools
import inspect
import os
import random
import resource
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from agent_worker.builtins import BUILTIN_ACTIONS, IGNORE
from agent_worker.inbox import Abandon, Command, Configured, Delivered, Inbox, Stopping
from agent_worker.models import ModelError, ModelProvider, ModelRequest, make_model
from agent_worker.plugins import (
    Action,
    ActionResult,
    Message,
    Plugin,
    PluginLoadError,
    ProviderResult,
    Service,
    State,
    load_plugin,
)
from agent_worker.state import StatePathError, get_path, set_path
from agent_worker.store import MemoryStore
from agent_worker.tracer import Tracer
from agent_worker.transport import Transport
from protocol import (
    ActionFinished,
    ActionInfo,
    ActionStarted,
    AgentConfig,
    AgentErrorEvent,
    AgentErrorKind,
    AgentStats,
    Bye,
    CmdAction,
    CmdGetState,
    CmdPending,
    CmdQueryMemory,
    CmdSend,
    CmdSetState,
    CmdTrace,
    EncodeError,
    Event,
    Msg,
    Origin,
    PluginEvent,
    Ready,
    Result,
    StateChanged,
)
from protocol.statepath import NO_STATE_AT

EXIT_OK = 0
EXIT_ABANDONED = 4
"""Exit code when the agent leaves on its own because the coordinator is gone."""

PROGRESS_TICK_S = 0.1
"""The runtime's event loop ticks this often; the tick count rides on every ACK (Ack.progress)
so the coordinator sees a loop that a handler blocks."""

SENT_KEYS_KEPT = 64
"""Keys of the script's sends remembered (a retried send posts once); the oldest go first.
A key matters only while its step retries, and a timeline retries one step at a time, so this
covers 64 timelines sending through one agent at once. (4,096 filled for minutes in a soak:
the driver of examples/soak.yaml grew 30 MiB/h until full.)"""

SERVICE_TIMEOUT_S = 10.0
"""How long one service may take to start or to stop."""

T = TypeVar("T")

_ORIGIN: contextvars.ContextVar[Origin] = contextvars.ContextVar("origin", default=Origin.AGENT)
"""Whose words the agent is saying now: inside an action the script ran, every message the
action posts (through its callback or `runtime.send`) is the script's, not the agent's own."""


@dataclass(slots=True)
class Counters:
    """Mutable per-message counters; turned into the wire's AgentStats once, at BYE."""

    messages_in: int = 0
    messages_out: int = 0
    commands: int = 0
    handler_errors: int = 0
    actions_run: int = 0
    actions_failed: int = 0
    model_calls: int = 0


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """How one action run ended. `status` is succeeded, failed (the handler said so), invalid
    (unknown name, parameters that do not fit, or validate said no), error (it raised) or
    timeout."""

    call_id: str
    status: str
    result: ActionResult | None
    error: str | None
    duration_s: float

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "call_id": self.call_id,
            "status": self.status,
            "error": self.error,
            "duration_ms": round(self.duration_s * 1000.0, 3),
            "result": None if self.result is None else self.result.model_dump(mode="json"),
        }


class AgentRuntime:
    def __init__(self, config: AgentConfig, transport: Transport, inbox: Inbox) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.name = config.name or config.agent_id
        self.transport = transport
        self.inbox = inbox
        self.memory = MemoryStore(Path(config.agent_dir), config.retention)
        for room in config.rooms:
            self.memory.ensure_room(room.id, room.channel.value, room.members)
        self.state: dict[str, JsonValue] = {}
        self.random = random.Random(f"plugins:{config.seed}")
        """For plugins' random choices: seeded from the run's seed, so `--seed` replays them."""
        self.counters = Counters()
        self.tracer = Tracer()
        """tracemalloc on request (`CmdTrace`): where this agent's memory goes."""
        self.plugins: list[Plugin] = []
        self.actions: dict[str, Action] = {a.name: a for a in BUILTIN_ACTIONS}
        self._infos: tuple[ActionInfo, ...] | None = None
        self.providers: list[tuple[str, Plugin]] = []
        self.services: dict[str, Service] = {}
        self.model: ModelProvider | None = None
        self.init_error: str | None = None
        self._rooms = {room.id: room for room in config.rooms}
        self._lock = threading.RLock()  # state, message ids and the store, for sync plugin code
        self._msg_counter = 0
        self._ticks = 0
        self._activity: tuple[str, float] = ("", 0.0)
        """What the runtime is busy with and since when (monotonic); one tuple, so that the
        transport thread reads a consistent pair."""
        self._sent_keys: OrderedDict[str, str] = OrderedDict()
        """A script send's key -> the message it posted (CmdSend.key)."""
        self._call_counter = 0
        self._executor = ThreadPoolExecutor(
            max_workers=config.handler_threads, thread_name_prefix="plugin"
        )
        self._busy = 0
        """Sync plugin calls running in the pool (a timed-out one stays until it returns)."""
        self._busy_lock = threading.Lock()
        self._saturated = False
        """Said once per time the pool is full, not once per waiting call."""
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the API plugins use ------------------------------------------------------------
    @property
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def get_service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(self.services) or "none"
            raise KeyError(
                f"agent {self.agent_id} has no service {name!r} (has: {known})"
            ) from None

    def get_setting(self, key: str, default: JsonValue = None) -> JsonValue:
        return self.config.settings.get(key, default)

    def get_state(self, path: str = "") -> JsonValue:
        """A copy of the state at dotted `path` ('' for all of it); KeyError when absent."""
        with self._lock:
            return copy.deepcopy(get_path(self.state, path))

    def set_state(self, path: str, value: JsonValue) -> JsonValue:
        """Set dotted `path`; emits `state.changed`. Returns the previous value (or None)."""
        with self._lock:
            previous = set_path(self.state, path, copy.deepcopy(value))
            self.transport.send(
                Event(event=StateChanged(path=path, value=value, previous=previous))
            )
            return previous

    def send(self, room: str, text: str, in_reply_to: str | None = None) -> Msg:
        """Post `text` to `room` as this agent: the model's or a plugin's own words, or the
        script's when an action the script ran is what posts it."""
        return self.post(room, text, _ORIGIN.get(), in_reply_to)

    def emit(self, name: str, data: dict[str, JsonValue]) -> None:
        """Send an event of the plugin's own to the coordinator's event log."""
        self.transport.send(Event(event=PluginEvent(name=name, data=data)))

    # -- main loop ------------------------------------------------------------------------
    def serve(self) -> int:
        """Start plugins and services, announce READY, then handle inbox items until STOP
        (exit 0) or abandonment."""
        try:
            return asyncio.run(self._serve())
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        arrived = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(arrived.set)

        self.inbox.set_waker(wake)

        def tick() -> None:
            self._ticks += 1
            loop.call_later(PROGRESS_TICK_S, tick)

        tick()
        self.transport.progress = lambda: (self._ticks, *self._activity)
        await self._start()
        self.transport.send(
            Ready(
                pid=os.getpid(),
                store_path=str(self.memory.path),
                actions=list(self._action_infos()),
                services=list(self.services),
                error=self.init_error,
            )
        )
        while True:
            item = self.inbox.get_nowait()
            if item is None:
                arrived.clear()
                if self.inbox.arm():
                    await arrived.wait()
                continue
            if isinstance(item, Delivered):
                with self._doing(f"message {item.msg.msg_id} from {item.msg.sender}"):
                    await self._on_message(item.msg)
            elif isinstance(item, Command):
                with self._doing(f"command {item.cmd.command.op}"):
                    await self._on_command(item)
            elif isinstance(item, Stopping):
                return await self._shutdown(item.stop.deadline_ms / 1000.0)
            elif isinstance(item, Abandon):
                print(f"agent {self.agent_id}: leaving: {item.reason}", file=sys.stderr)
                await self._stop_services()
                self.memory.close()
                return EXIT_ABANDONED
            elif isinstance(item, Configured):
                continue  # a duplicate CONFIGURE after a retransmit: already configured
            self.transport.request_window_update()

    # -- start-up -------------------------------------------------------------------------
    async def _start(self) -> None:
        """Load plugins, make the model, run plugin inits, start services. The first failure
        is kept in `init_error` (READY carries it; the coordinator stops the run with exit 2)
        and whatever had started is stopped again."""
        where = "model"
        try:
            for path in self.config.plugins:
                self._register(load_plugin(path), path)
            self.model = make_model(self.config.model, self.config.seed)
            for plugin, path in zip(self.plugins, self.config.plugins, strict=True):
                where = f"plugin {path!r}"
                if plugin.init is not None:
                    await self._call(plugin.init, (self,), SERVICE_TIMEOUT_S)
            for plugin, path in zip(self.plugins, self.config.plugins, strict=True):
                where = f"plugin {path!r}"
                for factory in plugin.services:
                    service = factory()
                    await asyncio.wait_for(service.start(self), SERVICE_TIMEOUT_S)
                    self.services[service.name] = service
        except (PluginLoadError, ModelError) as exc:
            self.init_error = f"agent {self.agent_id}: {exc}"
        except Exception as exc:
            self.init_error = f"agent {self.agent_id}: {where} failed to start: {_describe(exc)}"
        if self.init_error is not None:
            print(self.init_error, file=sys.stderr)
            await self._stop_services()

    def _register(self, plugin: Plugin, path: str) -> None:
        for action in plugin.actions:
            if action.name in self.actions:
                raise PluginLoadError(
                    f"plugin {path!r}: action {action.name!r} is already defined"
                    " (by a built-in or an earlier plugin)"
                )
            self.actions[action.name] = action
        self.plugins.append(plugin)
        self._infos = None

    def _action_infos(self) -> tuple[ActionInfo, ...]:
        """What the agent can do, as the model and READY see it: built once, since the JSON
        Schema of a parameters model costs about 0.35 ms to generate and was once generated
        for every message (a third of an agent's CPU in a ping/pong run)."""
        if self._infos is None:
            self._infos = tuple(self._action_info(a) for a in self.actions.values())
        return self._infos

    @staticmethod
    def _action_info(action: Action) -> ActionInfo:
        schema = action.parameters.model_json_schema() if action.parameters else None
        return ActionInfo(
            name=action.name,
            description=action.description,
            similes=list(action.similes),
            parameters=schema,
        )

    # -- the message pipeline -------------------------------------------------------------
    async def _on_message(self, msg: Msg) -> None:
        self.counters.messages_in += 1
        try:
            self._remember(msg, "in")
            if self.init_error is not None or self.model is None:
                return
            state = await self.compose_state(msg)
            self.counters.model_calls += 1
            decision = await self.model.decide(
                ModelRequest(
                    agent_id=self.agent_id,
                    agent_name=self.name,
                    system=self._system_text(state),
                    message=msg,
                    actions=self._action_infos(),
                )
            )
        except ModelError as exc:
            self._report_error(AgentErrorKind.MODEL, "model", f"answering {msg.msg_id}: {exc}")
            return
        except Exception as exc:
            self._handler_error("handling message " + msg.msg_id, exc)
            return
        ignore = False
        for call in decision.actions:
            ignore = ignore or call.name == IGNORE
            outcome = await self.run_action(call.name, call.params, msg, state, "model")
            if outcome.result is not None:
                state.values.update(outcome.result.values)
        if decision.reply is not None and not ignore:
            try:
                self.send(msg.room, decision.reply, in_reply_to=msg.msg_id)
            except EncodeError as exc:  # e.g. a templated reply over the frame limit
                self._handler_error("replying to " + msg.msg_id, exc)
        await self._evaluate(msg, state)

    def _system_text(self, state: State) -> str:
        parts = [f"# {self.name}"]
        if self.config.bio:
            parts.append(self.config.bio)
        if state.text:
            parts.append(state.text)
        return "\n\n".join(parts)

    async def compose_state(self, msg: Message) -> State:
        """State for `msg` from every provider, in plugin order (later values win)."""
        state = State()
        texts: list[str] = []
        for plugin in self.plugins:
            for provider in plugin.providers:
                try:
                    result = await self._call(
                        provider.get, (self, msg, state), self.config.action_timeout_s
                    )
                except Exception as exc:
                    self._handler_error(f"provider {provider.name}", exc)
                    continue
                if not isinstance(result, ProviderResult):
                    self._report_error(
                        AgentErrorKind.HANDLER,
                        f"provider {provider.name}",
                        f"returned {type(result).__name__}, not ProviderResult",
                    )
                    continue
                if result.text:
                    texts.append(result.text)
                state.values.update(result.values)
                state.data[provider.name] = result.data
        state.text = "\n".join(texts)
        return state

    async def _evaluate(self, msg: Message, state: State) -> None:
        timeout = self.config.action_timeout_s
        for plugin in self.plugins:
            for evaluator in plugin.evaluators:
                try:
                    if await self._call(evaluator.validate, (self, msg, state), timeout):
                        await self._call(evaluator.handler, (self, msg, state), timeout)
                except Exception as exc:
                    self._handler_error(f"evaluator {evaluator.name}", exc)

    @contextlib.contextmanager
    def _doing(self, what: str) -> Iterator[None]:
        """Say what the runtime is doing (carried by each ACK: a hang report names it)."""
        outer = self._activity
        self._activity = (what[:200], time.monotonic())
        try:
            yield
        finally:
            self._activity = outer

    async def run_action(
        self,
        name: str,
        params: dict[str, JsonValue],
        msg: Message,
        state: State,
        origin: str,
    ) -> ActionOutcome:
        """Validate and run one action, recording it with `action.*` events.

        The events carry the parameters the handler receives: validated by the action's
        model when it has one (a templated "20" read as an int is recorded as 20)."""
        self._call_counter += 1
        call_id = f"{self.agent_id}:{self._call_counter}"
        says = Origin.SCRIPT if origin == "script" else Origin.AGENT
        action = self.actions.get(name)
        parsed: BaseModel | None = None
        problem: str | None = None
        if action is None:
            known = ", ".join(sorted(self.actions))
            problem = f"unknown action {name!r}; {self.agent_id} has: {known}"
        elif action.parameters is not None:
            try:
                parsed = action.parameters.model_validate(params)
                params = parsed.model_dump(mode="json")
            except ValidationError as exc:
                problem = f"parameters do not fit {name}: {_validation_text(exc)}"
        common = {
            "action": name,
            "call_id": call_id,
            "params": params,
            "origin": origin,
            "msg_id": msg.msg_id,
            "room": msg.room,
        }
        self.transport.send(Event(event=ActionStarted(**common)))  # type: ignore[arg-type]
        started = time.perf_counter()
        if action is None or problem is not None:
            status, result, error = "invalid", None, problem
        else:
            token = _ORIGIN.set(says)
            try:
                status, result, error = await self._execute(action, parsed, msg, state)
            finally:
                _ORIGIN.reset(token)
        outcome = ActionOutcome(call_id, status, result, error, time.perf_counter() - started)
        self.counters.actions_run += 1
        if not outcome.succeeded:
            self.counters.actions_failed += 1
        if status == "error":  # the handler raised: an error of the agent, like an evaluator's
            limited = error is not None and error.startswith(LIMIT_ERRORS)
            kind = AgentErrorKind.LIMIT if limited else AgentErrorKind.HANDLER
            self._report_error(kind, f"action {name}", error or "raised")
        self.transport.send(
            Event(
                event=ActionFinished(
                    type="action.completed" if outcome.succeeded else "action.failed",
                    status=status,  # type: ignore[arg-type]
                    error=error,
                    duration_ms=round(outcome.duration_s * 1000.0, 3),
                    result=None if result is None else result.model_dump(mode="json"),
                    **common,  # type: ignore[arg-type]
                )
            )
        )
        return outcome

    async def _execute(
        self, action: Action, parsed: BaseModel | None, msg: Message, state: State
    ) -> tuple[str, ActionResult | None, str | None]:
        name = action.name
        timeout = self.config.action_timeout_s

        def callback(text: str) -> None:
            self.send(msg.room, text, in_reply_to=msg.msg_id)

        try:
            with self._doing(f"action {name}"):
                if not await self._call(action.validate, (self, msg, state), timeout):
                    return "invalid", None, f"{name}: validate returned false"
                args = (self, msg, state, parsed, callback)
                result = await self._call(action.handler, args, timeout)
        except TimeoutError:
            return "timeout", None, f"{name} timed out after {timeout:g}s"
        except Exception as exc:
            return "error", None, _limit_error(exc) or _describe(exc)
        if result is None:
            result = ActionResult()
        if not isinstance(result, ActionResult):
            return "error", None, f"{name} returned {type(result).__name__}, not ActionResult"
        if not result.success:
            return "failed", result, result.error or f"{name} reported failure"
        return "succeeded", result, None

    async def _call(
        self, fn: Callable[..., T | Awaitable[T]], args: tuple[object, ...], timeout: float
    ) -> T:
        """Call a plugin function, sync or async, within `timeout` seconds."""
        if inspect.iscoroutinefunction(fn):
            coro: Awaitable[T] = fn(*args)
            return await asyncio.wait_for(coro, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._note_saturation()
        # run_in_executor does not carry context variables (the origin) into the thread.
        context = contextvars.copy_context()
        value = await asyncio.wait_for(
            loop.run_in_executor(
                self._executor, functools.partial(context.run, self._counted, fn, *args)
            ),
            timeout,
        )
        if inspect.isawaitable(value):  # a sync function that returned a coroutine
            return await asyncio.wait_for(value, max(deadline - loop.time(), 0.0))
        return value

    def _counted(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` in a pool thread, counted as busy until it returns (a call past its
        timeout keeps its thread, which is how a pool fills up)."""
        with self._busy_lock:
            self._busy += 1
        try:
            return fn(*args)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _note_saturation(self) -> None:
        """Before a sync call: if every pool thread is busy, it will wait; say so once."""
        size = self.config.handler_threads
        if self._busy < size:
            self._saturated = False
            return
        if not self._saturated:
            self._saturated = True
            self._report_error(
                AgentErrorKind.POOL,
                "plugin thread pool",
                f"all {size} threads for sync plugin functions are busy (calls past their"
                " timeout keep theirs), so calls wait; raise handler_threads or make the"
                " slow functions async",
            )

    # -- commands from the coordinator ----------------------------------------------------
    async def _on_command(self, item: Command) -> None:
        self.counters.commands += 1
        command = item.cmd.command
        try:
            if isinstance(command, CmdAction):
                result = await self._run_action_command(command)
            elif isinstance(command, CmdTrace):
                result = Result(ok=True, value=self.tracer.run(command))
            elif isinstance(command, CmdPending):
                result = Result(ok=True, value={"outbox": self.transport.pending()})
            else:
                result = self._run_command(command)
        except Exception as exc:
            result = Result(ok=False, error=_describe(exc))
        try:
            self.transport.send(result, corr=item.corr)
        except EncodeError as exc:  # e.g. a state read larger than a frame
            self.transport.send(Result(ok=False, error=str(exc)), corr=item.corr)

    async def _run_action_command(self, command: CmdAction) -> Result:
        if self.init_error is not None:
            return Result(ok=False, error=self.init_error)
        room = command.room or next(iter(self._rooms), self.agent_id)
        with self._lock:
            self._msg_counter += 1
            msg_id = f"{self.agent_id}:{self.transport.incarnation}:script-{self._msg_counter}"
        msg = Msg(msg_id=msg_id, sender=self.agent_id, room=room, text="", origin=Origin.SCRIPT)
        state = await self.compose_state(msg)
        outcome = await self.run_action(command.name, command.params, msg, state, "script")
        return Result(ok=outcome.succeeded, value=outcome.to_json(), error=outcome.error)

    def _run_command(self, command: CmdSend | CmdSetState | CmdGetState | CmdQueryMemory) -> Result:
        if isinstance(command, CmdSend):
            if command.room not in self._rooms:
                return Result(
                    ok=False, error=f"{self.agent_id} is not a member of room {command.room!r}"
                )
            if command.key is not None and command.key in self._sent_keys:
                # Asked again (a retried step): posted once already, so say which message.
                return Result(ok=True, value={"msg_id": self._sent_keys[command.key],
                                              "again": True})  # fmt: skip
            msg = self.post(command.room, command.text, Origin.SCRIPT)
            if command.key is not None:
                self._sent_keys[command.key] = msg.msg_id
                while len(self._sent_keys) > SENT_KEYS_KEPT:
                    self._sent_keys.popitem(last=False)
            return Result(ok=True, value={"msg_id": msg.msg_id})
        if isinstance(command, CmdSetState):
            try:
                return Result(ok=True, value=self.set_state(command.path, command.value))
            except StatePathError as exc:
                return Result(ok=False, error=str(exc))
        if isinstance(command, CmdGetState):
            try:
                return Result(ok=True, value=self.get_state(command.path))
            except KeyError:
                return Result(ok=False, error=f"{NO_STATE_AT}{command.path!r}")
        memories = self.memory.recent(command.room, command.limit)
        return Result(
            ok=True,
            value=[
                {
                    "id": m.id,
                    "room": m.room,
                    "entity": m.entity,
                    "direction": m.direction,
                    "content": m.content,
                    "created_at": m.created_at,
                }
                for m in memories
            ],
        )

    # -- sending --------------------------------------------------------------------------
    def post(self, room: str, text: str, origin: Origin, in_reply_to: str | None = None) -> Msg:
        with self._lock:
            self._msg_counter += 1
            msg = Msg(
                msg_id=f"{self.agent_id}:{self.transport.incarnation}:{self._msg_counter}",
                sender=self.agent_id,
                room=room,
                text=text,
                origin=origin,
                in_reply_to=in_reply_to,
            )
            self.transport.send(msg, dst=room)  # first: a message that cannot be sent is not kept
            self._remember(msg, "out")
            self.counters.messages_out += 1
        return msg

    def _remember(self, msg: Msg, direction: str) -> None:
        content: dict[str, JsonValue] = {"text": msg.text, "origin": msg.origin.value}
        if msg.in_reply_to is not None:
            content["in_reply_to"] = msg.in_reply_to
        with self._lock:
            self.memory.add(msg.msg_id, msg.room, msg.sender, direction, content)

    def _handler_error(self, what: str, exc: BaseException) -> None:
        print(f"agent {self.agent_id}: error {what}:\n{traceback.format_exc()}", file=sys.stderr)
        if (limit := _limit_error(exc)) is not None:
            self._report_error(AgentErrorKind.LIMIT, what, limit)
        else:
            self._report_error(AgentErrorKind.HANDLER, what, _describe(exc))

    def _report_error(self, kind: AgentErrorKind, where: str, error: str) -> None:
        self.counters.handler_errors += 1
        self.transport.send(Event(event=AgentErrorEvent(kind=kind, where=where, error=error)))

    # -- shutdown -------------------------------------------------------------------------
    async def _stop_services(self) -> None:
        """Stop every started service, newest first; a failure is reported, not fatal."""
        for name in reversed(list(self.services)):
            service = self.services.pop(name)
            try:
                await asyncio.wait_for(service.stop(), SERVICE_TIMEOUT_S)
            except Exception as exc:
                self._report_error(
                    AgentErrorKind.SERVICE, f"stopping service {name}", _describe(exc)
                )

    async def _shutdown(self, deadline_s: float) -> int:
        deadline = time.monotonic() + deadline_s
        await self._stop_services()
        if self.model is not None:
            for problem in self.model.problems_at_end():
                self._report_error(AgentErrorKind.MODEL, "model", problem)
            try:
                await self.model.close()
            except Exception as exc:
                self._report_error(AgentErrorKind.MODEL, "closing the model", _describe(exc))
        drained = self.transport.flush(deadline)
        try:
            by_room = self.memory.counts_by_room()
        except Exception as exc:  # a broken store must not cost the BYE
            by_room = {}
            self._report_error(AgentErrorKind.AGENT, "counting memories", _describe(exc))
        rows, evicted = self.memory.rows, self.memory.evicted
        self.memory.close()
        t = self.transport
        c = self.counters
        stats = AgentStats(
            messages_in=c.messages_in,
            messages_out=c.messages_out,
            commands=c.commands,
            handler_errors=c.handler_errors,
            duplicates_dropped=t.inbound.duplicates,
            retries=t.outbox.retransmissions,
            dead_letters=t.stats.dead_letters,
            rejected_frames=t.stats.rejected,
            store_rows=rows,
            store_evicted=evicted,
            store_rows_by_room=by_room,
            inbox_peak=self.inbox.peak,
            actions_run=c.actions_run,
            actions_failed=c.actions_failed,
            model_calls=c.model_calls,
            peak_rss_bytes=_peak_rss_bytes(),
            state=self.state,
        )
        undelivered = 0 if drained else t.outbox.in_flight + t.outbox.queued
        try:
            self.transport.send(Bye(stats=stats, undelivered=undelivered))
        except EncodeError as exc:  # the final state does not fit in a frame: say so instead
            stats = stats.model_copy(update={"state": {"error": f"state not sent: {exc}"}})
            self.transport.send(Bye(stats=stats, undelivered=undelivered))
        self.transport.flush(deadline)
        return EXIT_OK


def _peak_rss_bytes() -> int | None:
    """This process's own peak RSS (VmHWM), or None where /proc is not available.

    Not `ru_maxrss`: on Linux that is carried across exec, so a spawned agent would report the
    coordinator's RSS at the moment it forked whenever that is larger.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


LIMIT_ERRORS = ("memory: ", "open_files: ")
"""How `_limit_error` begins what it describes."""


def _limit_error(exc: BaseException) -> str | None:
    """What a limit (`limits:`) made of `exc`, or None: a MemoryError (an allocation past the
    data limit, `memory`) or running out of descriptors (`open_files`)."""
    if isinstance(exc, MemoryError):
        which, name = resource.RLIMIT_DATA, "memory"
    elif isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        which, name = resource.RLIMIT_NOFILE, "open_files"
    else:
        return None
    soft, _ = resource.getrlimit(which)
    if soft == resource.RLIM_INFINITY:
        at = "no limit set"
    else:
        at = f"its limit {soft >> 20} MiB" if name == "memory" else f"its limit {soft}"
    return f"{name}: {_describe(exc)} ({at})"


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
    )
