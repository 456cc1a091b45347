"""TLS for tests: self-signed certificates, and the test upstream served over TLS.

``self_signed`` makes a certificate with the ``openssl`` command (for ``host`` only, valid a day).
``start_tls_upstream`` runs the app of ``upstreams.py`` (every endpoint, ``/_ws`` included) behind
that certificate (``python -m tests.support.tls --port P --cert C --key K``); its control plane
answers over TLS, which ``procs.Upstream`` reaches without verifying. ``tls_backends`` starts two,
behind two certificates. A process trusts a certificate when started with ``SSL_CERT_FILE``
naming it (OpenSSL's default CA file, read by ``ssl.create_default_context``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .procs import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    ProcessExitedError,
    Upstream,
    free_port,
    wait_for_port,
)
from .upstreams import SHUTDOWN_TIMEOUT_S, create_app

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate (its own CA) and its private key, as PEM files."""

    cert: Path
    key: Path


def self_signed(directory: Path, name: str, host: str = "localhost") -> Certificate:
    """A new self-signed certificate for the DNS name ``host`` in ``directory``."""
    if OPENSSL is None:
        raise RuntimeError("the openssl command is not installed")
    certificate = Certificate(directory / f"{name}.crt", directory / f"{name}.key")
    subprocess.run(
        [
            OPENSSL,
            *("req", "-x509", "-nodes", "-days", "1", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"),
            *("-keyout", str(certificate.key), "-out", str(certificate.cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate


def start_tls_upstream(name: str, certificate: Certificate) -> Upstream:
    """The test upstream on ``https://127.0.0.1:PORT`` (and ``wss://``), behind ``certificate``."""
    port = free_port()
    process = ManagedProcess(
        [
            *(sys.executable, "-m", "tests.support.tls", "--port", str(port), "--name", name),
            *("--cert", str(certificate.cert), "--key", str(certificate.key)),
        ],
        name=f"tls-upstream-{name}",
        cwd=REPO_ROOT,
    ).start()
    try:
        wait_for_port(LOOPBACK, port, process=process)
    except (TimeoutError, ProcessExitedError):
        process.stop()
        raise
    return Upstream(f"https://{LOOPBACK}:{port}", process=process)


@dataclass
class TlsBackends:
    """Two TLS upstreams for ``localhost``: ``trusted`` behind the certificate in ``ca_file``,
    ``untrusted`` behind another self-signed one that nothing trusts."""

    trusted: Upstream
    untrusted: Upstream
    ca_file: Path


@contextlib.contextmanager
def tls_backends(directory: Path) -> Iterator[TlsBackends]:
    trusted = self_signed(directory, "trusted")
    untrusted = self_signed(directory, "untrusted")
    with contextlib.ExitStack() as stack:
        yield TlsBackends(
            stack.enter_context(start_tls_upstream("trusted", trusted)),
            stack.enter_context(start_tls_upstream("untrusted", untrusted)),
            trusted.cert,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The Kairos test upstream, over TLS.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="tls-upstream")
    parser.add_argument("--cert", required=True, help="PEM certificate")
    parser.add_argument("--key", required=True, help="PEM private key")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    web.run_app(
        create_app(args.name),
        host=args.host,
        port=args.port,
        ssl_context=context,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=None,
    )


if __name__ == "__main__":
    main()
