"""The coalesce stage: identical in-flight requests share one flight (single-flight), and an
optional response cache answers repeats without queueing.

It sits after routing (so different arms never merge) and before admission (so a follower takes no
queue space). Not built yet: ``wrap`` returns the target unchanged, which keeps the stage free on the
hot path until a model opts in.
"""

from __future__ import annotations

from gateway.model_config import ModelConfig
from gateway.pipeline.target import Target


def wrap(target: Target, config: ModelConfig) -> Target:
    """The version's target behind this stage (today: the target itself)."""
    return target
