"""JSON Schema exports: the scenario format (for editors) and report.json (for consumers).

Both come straight from the pydantic models the runner itself validates with, so the exported
schema cannot drift from what `scenario-runner validate` accepts. What a JSON Schema cannot say
(references to undefined agents, rooms or steps; a sender outside its room) is still checked by
`validate` only.
"""

from __future__ import annotations

from pydantic import JsonValue
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from orchestrator.report.model import SCHEMA_VERSION, ScenarioReport
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.spec import Scenario

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_ACTING_ARGS = {"send": "SendArgs", "action": "ActionArgs", "set_state": "SetStateArgs"}


class _Generator(GenerateJsonSchema):
    def encode_default(self, dft: object) -> JsonValue:
        # A Duration default is a dataclass, which pydantic would show as {"seconds": 60.0}; a
        # scenario file writes it as "60s", and the schema's default must be a valid value.
        if isinstance(dft, Duration):
            return str(dft)
        encoded: JsonValue = super().encode_default(dft)
        return encoded


def scenario_schema() -> JsonSchemaValue:
    schema = Scenario.model_json_schema(mode="validation", schema_generator=_Generator)
    # In an actor's script, send / action / set_state act as the actor unless they name an
    # agent; both kinds of timeline share these definitions, so here `agent` is optional.
    # `validate` still requires it in the main script.
    for step, args in _ACTING_ARGS.items():
        definition = schema["$defs"][args]
        definition["required"] = [k for k in definition["required"] if k != "agent"]
        definition["properties"]["agent"]["description"] = (
            f"Who does it; required in the main script, the actor by default in an actor's"
            f" script ({step} step)"
        )
    return {
        "$schema": DRAFT,
        "$id": "https://scenario-runner.dev/schema/scenario.json",
        **schema,
        "title": "scenario-runner scenario",
    }


def report_schema() -> JsonSchemaValue:
    schema = ScenarioReport.model_json_schema(mode="serialization", schema_generator=_Generator)
    return {
        "$schema": DRAFT,
        "$id": f"https://scenario-runner.dev/schema/report-v{SCHEMA_VERSION}.json",
        **schema,
        "title": f"scenario-runner report.json (schema_version {SCHEMA_VERSION})",
    }
