"""A stateful example plugin: a todo list kept by a service, with actions to change it.

Load it in a scenario (the path is relative to the scenario file's folder):

    agents:
      - id: assistant
        plugins: [plugins.todo:plugin]

Actions: CREATE_TODO {title}, COMPLETE_TODO {title}, TRANSFER_TODO {title, to}. Rules: titles
are unique among open todos, a completed todo cannot be completed again, only open todos can
be transferred, and an agent holds at most `todo.max_open` open todos (a setting, default 10).
Every change is mirrored into the agent's state under `todos` (`todos.open`, `todos.done`,
`todos.count`), so assertions can read it; the provider shows the open todos to the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from agent_worker.plugins import (
    Action,
    ActionResult,
    Callback,
    Message,
    Plugin,
    Provider,
    ProviderResult,
    State,
)

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


class TodoService:
    """One per agent: the todo list itself."""

    name = "todo"

    def __init__(self) -> None:
        self.open: dict[str, str] = {}  # title -> owner
        self.done: list[str] = []
        self.runtime: AgentRuntime | None = None
        self.started = False

    async def start(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.started = True
        runtime.set_state("todos", {"open": [], "done": [], "count": 0})

    async def stop(self) -> None:
        self.started = False

    def publish(self) -> None:
        assert self.runtime is not None  # started before any action runs
        self.runtime.set_state(
            "todos",
            {"open": sorted(self.open), "done": list(self.done), "count": len(self.open)},
        )


def _service(runtime: AgentRuntime) -> TodoService:
    service = runtime.get_service("todo")
    assert isinstance(service, TodoService)
    return service


class TitleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)


class TransferParams(TitleParams):
    to: str = Field(min_length=1)


def create(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, TitleParams)
    todos = _service(runtime)
    limit = runtime.get_setting("todo.max_open", 10)
    if params.title in todos.open:
        return ActionResult(success=False, error=f"todo {params.title!r} already exists")
    if isinstance(limit, int) and len(todos.open) >= limit:
        return ActionResult(success=False, error=f"too many open todos (limit {limit})")
    todos.open[params.title] = runtime.agent_id
    todos.publish()
    callback(f"created todo: {params.title}")
    return ActionResult(text=f"created {params.title}", values={"last_todo": params.title})


def complete(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, TitleParams)
    todos = _service(runtime)
    if params.title in todos.done:
        return ActionResult(success=False, error=f"todo {params.title!r} is already done")
    if todos.open.pop(params.title, None) is None:
        return ActionResult(success=False, error=f"no open todo {params.title!r}")
    todos.done.append(params.title)
    todos.publish()
    callback(f"completed todo: {params.title}")
    return ActionResult(text=f"completed {params.title}", data={"done": len(todos.done)})


def has_open_todos(runtime: AgentRuntime, message: Message, state: State) -> bool:
    return bool(_service(runtime).open)


def transfer(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, TransferParams)
    todos = _service(runtime)
    if params.title not in todos.open:
        return ActionResult(success=False, error=f"no open todo {params.title!r}")
    todos.open[params.title] = params.to
    todos.publish()
    return ActionResult(text=f"{params.title} now belongs to {params.to}")


def open_todos(runtime: AgentRuntime, message: Message, state: State) -> ProviderResult:
    todos = _service(runtime)
    listing = ", ".join(sorted(todos.open)) or "none"
    return ProviderResult(text=f"Open todos: {listing}", values={"open_todos": len(todos.open)})


plugin = Plugin(
    name="todo",
    description="A todo list per agent.",
    actions=[
        Action("CREATE_TODO", create, "Create a todo.", ("ADD_TODO",), TitleParams),
        Action("COMPLETE_TODO", complete, "Mark an open todo done.", ("FINISH_TODO",), TitleParams),
        Action(
            "TRANSFER_TODO",
            transfer,
            "Give an open todo to someone else.",
            parameters=TransferParams,
            validate=has_open_todos,
        ),
    ],
    providers=[Provider("open_todos", open_todos, "The agent's open todos.")],
    services=[TodoService],
)
