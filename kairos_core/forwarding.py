"""Client addressing: who the client is, and what the upstream is told about it.

Rules (DESIGN.md §2 step 1, §4):

- The client IP is the peer address, unless the peer is one of ``server.trusted_proxies``: then
  it is the right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy. Hops that are
  not IP addresses (``unknown``, host names, garbage) are skipped, so a client can never make its
  address a string of its choosing. A trusted peer that sends no usable hop is the client.
- ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Forwarded`` and
  ``X-Real-IP`` sent by an untrusted peer are replaced, never passed on: ``X-Forwarded-For`` and
  ``X-Real-IP`` become the client IP, ``X-Forwarded-Proto`` the listener's scheme,
  ``X-Forwarded-Host`` the request's ``Host``, and ``Forwarded`` (RFC 7239) one element
  ``for=...;proto=...;host=...``. From a trusted proxy the chains are extended instead: the
  peer is appended to its ``X-Forwarded-For``, an element to its ``Forwarded``, and its
  ``X-Forwarded-Proto`` is kept.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Sequence

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]
HeaderLookup = Callable[[str], str | None]


def parse_networks(entries: Sequence[str]) -> Networks:
    """``server.trusted_proxies`` (addresses or CIDR blocks) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted(ip: str, networks: Networks) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def client_ip(peer_ip: str, forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address by the rule above."""
    if not forwarded_for or not is_trusted(peer_ip, trusted):
        return peer_ip
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if not _is_ip(hop):
            continue
        if not is_trusted(hop, trusted):
            return hop
    return peer_ip


def forwarded_headers(
    header: HeaderLookup,
    *,
    peer_ip: str,
    client: str,
    scheme: str,
    host: str | None,
    trusted: Networks,
) -> list[tuple[str, str]]:
    """The addressing headers the gateway sends upstream (the client's own are dropped)."""
    from_proxy = is_trusted(peer_ip, trusted)
    sent_for = header("x-forwarded-for") if from_proxy else None
    sent_forwarded = header("forwarded") if from_proxy else None
    proto = (header("x-forwarded-proto") if from_proxy else None) or scheme
    element = _forwarded_element(peer_ip if from_proxy else client, scheme, host)
    out = [
        ("X-Forwarded-For", f"{sent_for}, {peer_ip}" if sent_for else client),
        ("X-Forwarded-Proto", proto),
        ("X-Real-IP", client),
        ("Forwarded", f"{sent_forwarded}, {element}" if sent_forwarded else element),
    ]
    if host:
        out.append(("X-Forwarded-Host", host))
    return out


@functools.lru_cache(maxsize=4096)
def _forwarded_element(node: str, scheme: str, host: str | None) -> str:
    """One RFC 7239 element (kept for repeat clients: it is the same string every time)."""
    element = f"for={_forwarded_node(node)};proto={scheme}"
    if host:
        element += f";host={host}" if _TOKEN.fullmatch(host) else f";host={_quoted(host)}"
    return element


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string: ``"`` and ``\\`` escaped, so no value closes it early."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _forwarded_node(ip: str) -> str:
    """RFC 7239 §6: IPv6 addresses are bracketed and quoted."""
    return f'"[{ip}]"' if ":" in ip else ip


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
