"""The config language: models (the schema), the loader and the semantic rules."""

from kairos_core.config.errors import ConfigError, ConfigIssue, Severity
from kairos_core.config.loader import (
    MAX_CONFIG_BYTES,
    LoadedConfig,
    default_config_path,
    format_path,
    load_config,
    parse_config,
    validate_document,
)
from kairos_core.config.models import (
    AiConfig,
    AiPolicy,
    Backend,
    CircuitBreakerConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryConfig,
    Router,
    config_schema,
    route_ids,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "AiConfig",
    "AiPolicy",
    "Backend",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigIssue",
    "GatewayConfig",
    "LoadedConfig",
    "RateLimitConfig",
    "RetryConfig",
    "Router",
    "Severity",
    "config_schema",
    "default_config_path",
    "format_path",
    "load_config",
    "parse_config",
    "route_ids",
    "validate_document",
]
