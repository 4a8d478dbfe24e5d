"""A scenario's agents on the wire: the spec (YAML models) turned into each agent's
CONFIGURE body, its seed and its environment. The one place the scenario format meets the
protocol."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from orchestrator.scenario.spec import ActionCallSpec, ModelSpec, Scenario, channel_type
from protocol import (
    ActionCallConfig,
    AgentConfig,
    ChannelType,
    FixtureConfig,
    FixturesModelConfig,
    ModelConfig,
    OpenAIModelConfig,
    RetentionConfig,
    RoomConfig,
    RuleConfig,
    RulesModelConfig,
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
