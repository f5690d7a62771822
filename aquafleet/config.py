"""The product's settings: one pydantic-settings object, built once at start-up and passed down.

Every setting comes from an environment variable with the ``AQUAFLEET_`` prefix. A missing or
malformed one stops start-up with one line per problem naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aquafleet.errors import ConfigError

ENV_PREFIX = "AQUAFLEET_"

_DATABASE_SCHEMES = ("postgresql", "postgres")
_BROKER_SCHEMES = {"mqtt": 1883, "mqtts": 8883, "tcp": 1883}


def _default_state_dir() -> Path:
    return platformdirs.user_state_path("aquafleet", appauthor=False)


class Settings(BaseSettings):
    """Everything the product can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL/TimescaleDB URL; unset starts the embedded PostgreSQL.",
    )
    broker_url: str | None = Field(
        default=None,
        description="MQTT broker, mqtt://host:port or mqtts://host:port; unset: the demo broker.",
    )
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    timezone: str = Field(
        default="Asia/Shanghai",
        description="The company time zone: the policy's 'same day' is a day in this zone.",
    )
    rules_path: Path | None = Field(default=None, description="The rule thresholds file.")
    sla_policy_path: Path | None = Field(default=None, description="The SLA policy file.")
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where the embedded database and local state live.",
    )
    telemetry_retention_days: Annotated[int, Field(ge=1, le=36500)] = 90
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    log_format: Literal["text", "json"] = "text"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in _DATABASE_SCHEMES:
            raise ValueError(f"must be a postgresql:// URL, got scheme {parts.scheme or 'none'!r}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in _BROKER_SCHEMES:
            raise ValueError(f"must be mqtt://host:port or mqtts://host:port, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"has no host: {value!r}")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ValueError(f"has a bad port: {value!r}") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @field_validator("rules_path", "sla_policy_path")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def broker_host_port(self) -> tuple[str, int] | None:
        if self.broker_url is None:
            return None
        parts = urlsplit(self.broker_url)
        assert parts.hostname is not None  # checked by the validator
        return parts.hostname, parts.port or _BROKER_SCHEMES[parts.scheme]

    @property
    def broker_tls(self) -> bool:
        return self.broker_url is not None and urlsplit(self.broker_url).scheme == "mqtts"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, turning validation errors into `ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from exc


_SHOW_INPUT_FOR = {"int_parsing", "literal_error", "less_than_equal", "greater_than_equal"}


def _describe(error: object) -> str:
    assert isinstance(error, dict)
    loc = error.get("loc") or ("?",)
    name = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if error.get("type") in _SHOW_INPUT_FOR:
        message = f"{message} (got {value!r})"
    return f"{name}: {message}"
