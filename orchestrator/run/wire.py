"""A scenario's agents on the wire: the spec (YAML models) turned into each agent's
CONFIGURE body, its seed and its environment. The one place the scenario format meets the
protocol."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
from pydantic import ValidationError

from orchestrator.scenario.spec import ActionCallSpec, ModelSpec, Scenario, channel_type
from protocol import (
    MAX_FRAME_BYTES,
    ActionCallConfig,
    AgentConfig,
    ChannelType,
    Configure,
    EncodeError,
    FixtureConfig,
    FixturesModelConfig,
    ModelConfig,
    OpenAIModelConfig,
    RetentionConfig,
    RoomConfig,
    RuleConfig,
    RulesModelConfig,
    encode_body,
)


def room_members(scenario: Scenario) -> dict[str, frozenset[str]]:
    """Room id -> its members, patterns expanded."""
    return {r.id: frozenset(scenario.room_members(r)) for r in scenario.rooms}


def agent_seed(seed: int, scenario: Scenario, repeat: int | None, agent_id: str) -> int:
    """The agent's own seed: a hash of the run's seed, the scenario (with its matrix values),
    the repeat number and the agent's id. Agents of one run, repeats of one scenario and
    scenarios of one invocation each draw differently, and the same `--seed` replays them all."""
    text = f"{seed}\0{scenario.label}\0{repeat or 0}\0{agent_id}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


SOAK_MAX_PER_ROOM = 256
"""A soak's default bound on each agent's memory store per room (`memory.max_per_room`
overrides it): an unbounded store grows with the run (in a 10-minute soak of 8 agents, 4.3 MiB
of SQLite a minute, and the agents' memory with it), which a leak verdict would rightly call
growth but which is not what a soak is looking for."""


def agent_configs(
    scenario: Scenario,
    run_dir: Path,
    seed: int = 0,
    repeat: int | None = None,
    default_max_per_room: int | None = None,
) -> list[AgentConfig]:
    """`default_max_per_room`: the store bound of agents that set none (a soak's)."""
    configs = []
    members = {r.id: scenario.room_members(r) for r in scenario.rooms}
    for agent_id in scenario.agent_ids:
        agent = scenario.agent_spec(agent_id)
        rooms = [
            RoomConfig(id=r.id, channel=ChannelType(channel_type(r.type)), members=members[r.id])
            for r in scenario.rooms
            if agent_id in members[r.id]
        ]
        configs.append(
            AgentConfig(
                agent_id=agent_id,
                agent_dir=str(run_dir / "agents" / agent_id),
                name=agent.name,
                bio=agent.bio,
                model=model_config(agent.model),
                rooms=rooms,
                plugins=list(agent.plugins),
                settings=dict(agent.settings),
                retention=RetentionConfig(
                    max_per_room=agent.memory.max_per_room or default_max_per_room,
                    max_age_s=agent.memory.max_age.seconds if agent.memory.max_age else None,
                ),
                action_timeout_s=agent.action_timeout.seconds,
                handler_threads=agent.handler_threads,
                seed=agent_seed(seed, scenario, repeat, agent_id),
            )
        )
    return configs


_SPEC_FIELD = {
    "bio": "bio", "name": "name", "model": "model", "plugins": "plugins",
    "settings": "settings", "retention": "memory", "action_timeout_s": "action_timeout",
    "handler_threads": "handler_threads",
}  # fmt: skip
"""Where a part of an agent's CONFIGURE body comes from in its spec."""

CHECK_RUN_DIR = Path("/tmp/scenario-runner-check-0123456789abcdef/run")
"""A run directory as long as a real one, for checking configurations before any run."""


def config_problems(scenario: Scenario) -> list[tuple[tuple[str | int, ...], str]]:
    """What would stop an agent's configuration from reaching it: a value the protocol's
    models refuse, or a CONFIGURE body over the frame limit. (location in the file, message)
    per problem, so that `validate` refuses what `run` could not send."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    first_of = {spec.ids[0]: i for i, spec in enumerate(scenario.agents)}
    try:
        configs = agent_configs(scenario, CHECK_RUN_DIR)
    except ValidationError as exc:
        for error in exc.errors():
            part = str(error["loc"][0]) if error["loc"] else ""
            problems.append(((), f"an agent's {_SPEC_FIELD.get(part, part)}: {error['msg']}"))
        return problems
    for config in configs:
        index = first_of.get(config.agent_id)
        if index is None:
            continue  # one check per spec: agents made by `count` differ only in their id
        parts = {
            field: len(msgpack.packb(config.model_dump(mode="json", include={field})))
            for field in _SPEC_FIELD
        }
        size = sum(parts.values())
        if size > MAX_FRAME_BYTES - FRAME_HEADROOM:
            biggest = max(parts, key=lambda field: parts[field])
            problems.append((
                ("agents", index, _SPEC_FIELD[biggest]),
                f"the agent's configuration is {size / 2**20:.2f} MiB, over the"
                f" {MAX_FRAME_BYTES / 2**20:g} MiB a frame carries; its {_SPEC_FIELD[biggest]}"
                f" alone is {parts[biggest] / 2**20:.2f} MiB",
            ))  # fmt: skip
            continue
        try:
            encode_body(Configure(config=config))
        except EncodeError as exc:
            problems.append((("agents", index), f"its configuration cannot be sent: {exc}"))
    return problems


FRAME_HEADROOM = 4096
"""Bytes of a frame kept for what the checks above do not count."""


def plugin_env(source: Path) -> dict[str, str]:
    """Plugins are imported by path relative to the scenario file's folder (as well as from
    wherever Python finds them), so `plugins.todo:plugin` next to the file works from any
    working directory."""
    folder = str(source.resolve().parent)
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": folder if not existing else f"{folder}{os.pathsep}{existing}"}


def _calls(calls: list[ActionCallSpec]) -> list[ActionCallConfig]:
    return [ActionCallConfig(name=c.name, params=dict(c.params)) for c in calls]


def model_config(spec: ModelSpec | None) -> ModelConfig:
    """The wire form of an agent's model; no model means rules that never answer."""
    if spec is None or spec.rules is not None:
        rules = spec.rules if spec is not None and spec.rules is not None else []
        return RulesModelConfig(
            rules=[
                RuleConfig(
                    contains=r.when.contains,
                    regex=r.when.regex,
                    reply=r.reply,
                    actions=_calls(r.actions),
                    chance=r.chance,
                )
                for r in rules
            ]
        )
    if spec.fixtures is not None:
        return FixturesModelConfig(
            fixtures=[
                FixtureConfig(
                    position=f.match.position if f.match else None,
                    prompt_contains=f.match.prompt_contains if f.match else None,
                    prompt_regex=f.match.prompt_regex if f.match else None,
                    reply=f.reply,
                    actions=_calls(f.actions),
                    label=f"model.fixtures[{i}]",
                )
                for i, f in enumerate(spec.fixtures)
            ]
        )
    assert spec.openai is not None  # ModelSpec holds exactly one provider
    o = spec.openai
    return OpenAIModelConfig(
        base_url=o.base_url,
        model=o.model,
        api_key_env=o.api_key_env,
        timeout_s=o.timeout.seconds,
        max_retries=o.max_retries,
        temperature=o.temperature,
        system_prompt=o.system_prompt,
    )
