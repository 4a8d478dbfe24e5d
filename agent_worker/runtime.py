"""AgentRuntime: everything one agent owns, driven on the agent process's main thread.

The runtime owns the memory store, the state, the message handler and the stats; it takes
items from the bounded inbox one at a time (so the handler runs once per delivered message,
in order) and sends through the transport, which runs in its own thread.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from agent_worker.handler import MessageHandler, RulesModel
from agent_worker.inbox import Abandon, Command, Configured, Delivered, Inbox, Stopping
from agent_worker.state import StatePathError, get_path, set_path
from agent_worker.store import MemoryStore
from agent_worker.transport import Transport
from protocol import (
    AgentConfig,
    AgentStats,
    Bye,
    CmdGetState,
    CmdQueryMemory,
    CmdSend,
    CmdSetState,
    EncodeError,
    Event,
    Msg,
    Origin,
    Ready,
    Result,
)

EXIT_OK = 0
EXIT_ABANDONED = 4
"""Exit code when the agent leaves on its own because the coordinator is gone."""


@dataclass(slots=True)
class Counters:
    """Mutable per-message counters; turned into the wire's AgentStats once, at BYE."""

    messages_in: int = 0
    messages_out: int = 0
    commands: int = 0
    handler_errors: int = 0


class AgentRuntime:
    def __init__(self, config: AgentConfig, transport: Transport, inbox: Inbox) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.transport = transport
        self.inbox = inbox
        self.store = MemoryStore(Path(config.agent_dir))
        self.handler: MessageHandler = RulesModel(config.model)
        self.state: dict[str, JsonValue] = {}
        self.counters = Counters()
        self._msg_counter = 0
        self._rooms = {room.id: room for room in config.rooms}

    # -- main loop ------------------------------------------------------------------------
    def serve(self) -> int:
        """Announce READY, then handle inbox items until STOP (exit 0) or abandonment."""
        self.transport.send(Ready(pid=os.getpid(), store_path=str(self.store.path)))
        while True:
            item = self.inbox.get()
            if isinstance(item, Delivered):
                self._on_message(item.msg)
            elif isinstance(item, Command):
                self._on_command(item)
            elif isinstance(item, Stopping):
                return self._shutdown(item.stop.deadline_ms / 1000.0)
            elif isinstance(item, Abandon):
                print(f"agent {self.agent_id}: leaving: {item.reason}", file=sys.stderr)
                self.store.close()
                return EXIT_ABANDONED
            elif isinstance(item, Configured):
                continue  # a duplicate CONFIGURE after a retransmit: already configured
            self.transport.request_window_update()

    def _on_message(self, msg: Msg) -> None:
        self.counters.messages_in += 1
        try:
            self._remember(msg, "in")
            replies = self.handler.handle(msg)
        except Exception as exc:
            self._handler_error("handling message " + msg.msg_id, exc)
            return
        for reply in replies:
            try:
                self.post(reply.room, reply.text, Origin.AGENT, in_reply_to=msg.msg_id)
            except EncodeError as exc:  # e.g. a templated reply over the frame limit
                self._handler_error("replying to " + msg.msg_id, exc)

    def _on_command(self, item: Command) -> None:
        self.counters.commands += 1
        command = item.cmd.command
        try:
            result = self._run_command(command)
        except Exception as exc:
            result = Result(ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            self.transport.send(result, corr=item.corr)
        except EncodeError as exc:  # e.g. a state read larger than a frame
            self.transport.send(Result(ok=False, error=str(exc)), corr=item.corr)

    def _run_command(self, command: CmdSend | CmdSetState | CmdGetState | CmdQueryMemory) -> Result:
        if isinstance(command, CmdSend):
            if command.room not in self._rooms:
                return Result(
                    ok=False, error=f"{self.agent_id} is not a member of room {command.room!r}"
                )
            msg = self.post(command.room, command.text, Origin.SCRIPT)
            return Result(ok=True, value={"msg_id": msg.msg_id})
        if isinstance(command, CmdSetState):
            try:
                previous = set_path(self.state, command.path, command.value)
            except StatePathError as exc:
                return Result(ok=False, error=str(exc))
            self.transport.send(
                Event(
                    name="state.changed",
                    data={"path": command.path, "value": command.value, "previous": previous},
                )
            )
            return Result(ok=True, value=previous)
        if isinstance(command, CmdGetState):
            try:
                return Result(ok=True, value=get_path(self.state, command.path))
            except KeyError:
                return Result(ok=False, error=f"no state at {command.path!r}")
        memories = self.store.recent(command.room, command.limit)
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
        self.store.add(msg.msg_id, msg.room, msg.sender, direction, content)

    def _handler_error(self, what: str, exc: BaseException) -> None:
        self.counters.handler_errors += 1
        detail = "".join(traceback.format_exception_only(exc)).strip()
        print(f"agent {self.agent_id}: error {what}:\n{traceback.format_exc()}", file=sys.stderr)
        self.transport.send(Event(name="error", data={"where": what, "error": detail}))

    # -- shutdown -------------------------------------------------------------------------
    def _shutdown(self, deadline_s: float) -> int:
        deadline = time.monotonic() + deadline_s
        drained = self.transport.flush(deadline)
        rows = self.store.rows
        self.store.close()
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
            inbox_peak=self.inbox.peak,
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
