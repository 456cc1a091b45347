"""``route-test --live``: breaker and health state of each backend, from a running gateway.

Reads the breakers through the SDK (``KairosClient.circuits()``, ``GET /api/circuits``, DESIGN.md
§7) and maps each one, field for field, to a :class:`~kairos_core.selection.BackendSnapshot`
for :func:`kairos_core.dryrun.plan_request`. Every fact (healthy, admitting, seconds to
half-open, in flight) is the gateway's own; nothing is re-derived here.
"""

from __future__ import annotations

from kairos_cli.remote import EXIT_UNAUTHORISED, EXIT_UNREACHABLE
from kairos_client import (
    CircuitInfo,
    KairosAuthError,
    KairosClient,
    KairosConnectionError,
    KairosError,
)
from kairos_core.selection import BackendSnapshot, SnapshotStates

TIMEOUT_S = 5.0


class LiveStateError(Exception):
    """The admin API could not give the state; ``exit_code`` follows DESIGN.md §9 (3, or 4)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fetch_backend_states(base_url: str, token: str | None) -> SnapshotStates:
    """The running gateway's view of every backend, from the admin API."""
    try:
        with KairosClient(base_url, token, timeout=TIMEOUT_S) as client:
            circuits = client.circuits()
    except KairosConnectionError as exc:
        raise LiveStateError(str(exc), EXIT_UNREACHABLE) from exc
    except KairosAuthError as exc:
        raise LiveStateError(
            f"the admin API at {base_url} refused the token (HTTP {exc.status}); "
            "pass --admin-token or set KAIROS_ADMIN_TOKEN",
            EXIT_UNAUTHORISED,
        ) from exc
    except KairosError as exc:
        raise LiveStateError(f"{base_url}/api/circuits: {exc}", EXIT_UNREACHABLE) from exc
    except ValueError as exc:
        raise LiveStateError(str(exc), EXIT_UNREACHABLE) from exc
    return SnapshotStates({circuit.backend: snapshot(circuit) for circuit in circuits})


def snapshot(circuit: CircuitInfo) -> BackendSnapshot:
    return BackendSnapshot(
        healthy=circuit.healthy,
        circuit=circuit.state,
        admits=circuit.admitting,
        seconds_until_half_open=circuit.half_open_in_s,
        in_flight=circuit.in_flight,
    )
