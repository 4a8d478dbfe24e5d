"""Model providers behind one interface (`base.ModelProvider`), chosen per agent."""

from __future__ import annotations

from agent_worker.models.base import (
    ActionCall,
    ModelDecision,
    ModelError,
    ModelProvider,
    ModelRequest,
)
from agent_worker.models.fixtures import FixturesModel
from agent_worker.models.rules import RulesModel
from protocol import FixturesModelConfig, ModelConfig, RulesModelConfig

__all__ = [
    "ActionCall",
    "FixturesModel",
    "ModelDecision",
    "ModelError",
    "ModelProvider",
    "ModelRequest",
    "RulesModel",
    "make_model",
]


def make_model(config: ModelConfig, seed: int = 0) -> ModelProvider:
    """The provider `config` names; ModelError if it cannot be set up (e.g. a missing key).
    `seed` seeds whatever the provider draws at random (and is passed on to an endpoint)."""
    if isinstance(config, RulesModelConfig):
        return RulesModel(config, seed)
    if isinstance(config, FixturesModelConfig):
        return FixturesModel(config)
    from agent_worker.models.openai_compat import OpenAIModel  # only agents that use it

    return OpenAIModel(config, seed=seed)
