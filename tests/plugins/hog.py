"""A plugin whose action holds the GIL in one C call for as long as it takes (a regex that
backtracks exponentially): the agent's transport thread cannot run, so it can neither read
its death pipe nor notice a silent coordinator. BLOCK keeps a pool thread; WEDGE, an async
action that sleeps, blocks the agent's event loop (commands wait behind it)."""

from __future__ import annotations

import re
import time
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel

from agent_worker.plugins import Action, ActionResult, Callback, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


def hog(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    re.match(r"(a+)+$", "a" * 64 + "b")  # about 2**64 steps, in C, without releasing the GIL
    return ActionResult()


class BlockParams(BaseModel):
    seconds: float


def block(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, BlockParams)
    time.sleep(params.seconds)  # a sync handler that keeps its pool thread (what is tested)
    return ActionResult()


async def wedge(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, BlockParams)
    time.sleep(params.seconds)  # blocks the agent's event loop: nothing else it does runs
    return ActionResult()


class AllocParams(BaseModel):
    mib: int


KEPT: list[bytes] = []
FILES: list[IO[bytes]] = []


def alloc(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, AllocParams)
    KEPT.append(b"\x01" * (params.mib << 20))  # written, so resident (not calloc's zero pages)
    return ActionResult()


def spin(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, BlockParams)
    end = time.process_time() + params.seconds
    while time.process_time() < end:  # burns CPU time (the cpu limit's test)
        pass
    return ActionResult()


def open_files(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    while True:  # until the open_files limit stops it (OSError EMFILE)
        FILES.append(open(__file__, "rb"))  # noqa: SIM115


plugin = Plugin(
    name="hog",
    actions=[
        Action("HOG", hog, description="Hold the GIL forever."),
        Action("BLOCK", block, description="Keep a pool thread.", parameters=BlockParams),
        Action("WEDGE", wedge, description="Block the event loop.", parameters=BlockParams),
        Action("ALLOC", alloc, description="Allocate and keep memory.", parameters=AllocParams),
        Action("SPIN", spin, description="Burn CPU time.", parameters=BlockParams),
        Action("OPEN_FILES", open_files, description="Open files until it cannot."),
    ],
)
