"""The rollout engines' error (a leaf module: both engines raise it, and the generic engine
module builds the vLLM one)."""

from __future__ import annotations

from srft.config import ConfigError


class EngineError(ConfigError):
    """The configured engine cannot start here; the message says what to install or change (a
    ConfigError, so that the CLI prints it in one line)."""
