"""The base of every settings group: a `BaseSettings` read from its own variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


def env_prefix(prefix: str) -> SettingsConfigDict:
    """A group's config: its variables' shared prefix, nothing unknown, immutable."""
    return SettingsConfigDict(env_prefix=prefix, extra="forbid", frozen=True)


class Group(BaseSettings):
    """One concern's settings. Built through `__init__`, so variables not given fall back to
    the environment and then to the defaults."""
