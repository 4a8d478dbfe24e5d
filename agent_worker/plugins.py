"""The plugin API: what a user writes to give an agent actions, providers, evaluators and services.

A plugin is a `Plugin` object named in a scenario by import path (`package.module:attribute`)
and imported inside the agent's own process, so two agents that load the same plugin share
nothing: not a module global, not a service instance, not a database file.

For each incoming message the runtime stores it, composes `State` from every provider, asks its
model what to reply and which actions to run, runs each action (`validate`, then `handler`, with
a timeout), sends the reply and runs the evaluators. Handlers, `validate`, provider `get` and
evaluator hooks may be plain functions or coroutines. `docs/plugins.md` has a worked example.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from protocol import Msg

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime

Message: TypeAlias = Msg
"""A chat message as plugins see it: msg_id, sender, room, text, origin, in_reply_to."""


class ActionResult(BaseModel):
    """What an action handler returns; recorded in the `action.completed` / `.failed` event."""

    model_config = ConfigDict(extra="forbid")

    success: bool = True
    text: str | None = None
    """Shown to the model and in the report; not sent anywhere by itself."""
    values: dict[str, JsonValue] = Field(default_factory=dict)
    """Merged into the state the following actions and the evaluators see."""
    data: dict[str, JsonValue] = Field(default_factory=dict)
    error: str | None = None


class ProviderResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = ""
    values: dict[str, JsonValue] = Field(default_factory=dict)
    data: dict[str, JsonValue] = Field(default_factory=dict)


@dataclass(slots=True)
class State:
    """Composed per message from every provider: their texts joined, their values merged
    (later providers win), their data kept per provider name."""

    text: str = ""
    values: dict[str, JsonValue] = field(default_factory=dict)
    data: dict[str, JsonValue] = field(default_factory=dict)


Callback = Callable[[str], None]
"""Given to action handlers: `callback(text)` posts `text` to the message's room, at once
(it never blocks; it works from sync and async handlers alike)."""

Validate = Callable[["AgentRuntime", Message, State], "bool | Awaitable[bool]"]
ActionHandler = Callable[
    ["AgentRuntime", Message, State, BaseModel | None, Callback],
    "ActionResult | Awaitable[ActionResult | None] | None",
]
"""Returns the ActionResult (None counts as a plain success)."""
ProviderGet = Callable[
    ["AgentRuntime", Message, State], "ProviderResult | Awaitable[ProviderResult]"
]
EvaluatorHandler = Callable[["AgentRuntime", Message, State], "Awaitable[None] | None"]


def _always(_runtime: AgentRuntime, _message: Message, _state: State) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Action:
    """Something the agent can do. `parameters` is a pydantic model: parameters are validated
    against it before `handler` runs (which receives the model instance, or None without one),
    and its JSON Schema is what the model and the docs see."""

    name: str
    handler: ActionHandler
    description: str = ""
    similes: Sequence[str] = ()
    parameters: type[BaseModel] | None = None
    validate: Validate = _always


@dataclass(frozen=True, slots=True)
class Provider:
    """Contributes text, values and data to the state composed for each message."""

    name: str
    get: ProviderGet
    description: str = ""


@dataclass(frozen=True, slots=True)
class Evaluator:
    """Runs after the response to each message (when `validate` says so); may write memories
    or state."""

    name: str
    handler: EvaluatorHandler
    description: str = ""
    validate: Validate = _always


class Service(Protocol):
    """One instance per agent, started before READY and stopped at teardown in reverse order.
    Found with `runtime.get_service(name)`."""

    name: str

    async def start(self, runtime: AgentRuntime) -> None: ...

    async def stop(self) -> None: ...


ServiceFactory = Callable[[], Service]
"""A service class (or any factory): the runtime makes one instance per agent."""

PluginInit = Callable[["AgentRuntime"], "Awaitable[None] | None"]


@dataclass(frozen=True, slots=True)
class Plugin:
    name: str
    actions: Sequence[Action] = ()
    providers: Sequence[Provider] = ()
    evaluators: Sequence[Evaluator] = ()
    services: Sequence[ServiceFactory] = ()
    init: PluginInit | None = None
    description: str = ""


class PluginLoadError(Exception):
    """A plugin could not be loaded; the message names the import path and the cause."""


def load_plugin(path: str) -> Plugin:
    """Import `package.module:attribute` and return the Plugin it names."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginLoadError(f"plugin {path!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginLoadError(
            f"plugin {path!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        plugin: object = getattr(module, attribute)
    except AttributeError:
        raise PluginLoadError(
            f"plugin {path!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not isinstance(plugin, Plugin):
        raise PluginLoadError(
            f"plugin {path!r} is a {type(plugin).__name__}, not an agent_worker.plugins.Plugin"
        )
    return plugin
