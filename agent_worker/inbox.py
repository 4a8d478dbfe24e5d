"""The agent's bounded inbox between the transport thread and the runtime thread.

Capacity is enforced by credit, not by blocking: the transport advertises the free slots in
every ACK and the coordinator never sends past them, so `put` always has room and the inbox
never drops. Control items (configure, stop, abandon) bypass the bound so shutdown can always
get through.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from protocol import AgentConfig, Cmd, Msg, Stop


@dataclass(frozen=True, slots=True)
class Delivered:
    """A chat message delivered to this agent."""

    msg: Msg


@dataclass(frozen=True, slots=True)
class Command:
    """A command from the coordinator; `corr` routes its RESULT back."""

    corr: int
    cmd: Cmd


@dataclass(frozen=True, slots=True)
class Configured:
    config: AgentConfig


@dataclass(frozen=True, slots=True)
class Stopping:
    stop: Stop


@dataclass(frozen=True, slots=True)
class Abandon:
    """The coordinator is gone (silent past its deadline, or our parent died): exit now."""

    reason: str


InboxItem = Delivered | Command | Configured | Stopping | Abandon


class Inbox:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: deque[InboxItem] = deque()
        self._control: deque[InboxItem] = deque()
        self._cond = threading.Condition()
        self.peak = 0
        self._waker: Callable[[], None] | None = None
        self._armed = False

    def put(self, item: InboxItem) -> None:
        with self._cond:
            self._data.append(item)
            self.peak = max(self.peak, len(self._data))
            self._cond.notify()
            wake = self._disarm()
        if wake is not None:
            wake()

    def put_control(self, item: InboxItem) -> None:
        with self._cond:
            self._control.append(item)
            self._cond.notify()
            wake = self._disarm()
        if wake is not None:
            wake()

    # -- for a consumer on an event loop ----------------------------------------------------
    def set_waker(self, wake: Callable[[], None]) -> None:
        """`wake` is called (from the putting thread) when an item arrives after `arm`."""
        self._waker = wake

    def arm(self) -> bool:
        """Ask for one wake-up at the next put; False (and no wake-up) if items are waiting."""
        with self._cond:
            if self._control or self._data:
                return False
            self._armed = True
            return True

    def _disarm(self) -> Callable[[], None] | None:
        if not self._armed:
            return None
        self._armed = False
        return self._waker

    def get_nowait(self) -> InboxItem | None:
        with self._cond:
            if self._control:
                return self._control.popleft()
            if self._data:
                return self._data.popleft()
            return None

    def get(self, timeout: float | None = None) -> InboxItem | None:
        """Next item, control first; None only when `timeout` passes with nothing."""
        with self._cond:
            if not self._control and not self._data:
                self._cond.wait_for(lambda: bool(self._control or self._data), timeout)
            if self._control:
                return self._control.popleft()
            if self._data:
                return self._data.popleft()
            return None

    def __len__(self) -> int:
        return len(self._data)

    def free(self) -> int:
        return max(0, self.capacity - len(self._data))
