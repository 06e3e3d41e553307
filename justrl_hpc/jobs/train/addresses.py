"""The address each node gives Ray (and NCCL, gloo) for the other nodes to reach it.

`gethostbyname(gethostname())` is what most launchers use, and many images map the hostname to 127.0.1.1 or to
a management network: the other nodes then never join and the chunk waits out `ray_wait_timeout_s`. Here the
order is: the cluster file's `network_interface` (its IPv4 address, exported to NCCL and gloo too), else the
hostname's address unless it is loopback, else the address this node would use to reach the head (ranks ≥ 1)
or the one on its default route (rank 0), whose interface is then exported to NCCL and gloo as well. A multi-node chunk never uses a loopback address: it says so and
names the setting instead.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915


class AddressError(Exception):
    """No address the other nodes can reach: the message names the setting that fixes it."""


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (ioctl SIOCGIFADDR, as `ip -4 addr` shows it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise AddressError(f"network interface {name!r} has no IPv4 address here ({exc.strerror}); "
                               "check cluster.network_interface") from None
    return socket.inet_ntoa(packed[20:24])


def route_address(peer: str) -> str | None:
    """The source address the kernel picks to reach `peer` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer, 9))
        except OSError:
            return None
        return s.getsockname()[0]


def default_route_interface(routes: Path = Path("/proc/net/route")) -> str | None:
    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:  # RTF_GATEWAY
            return fields[0]
    return None


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return True


def _hostname_address() -> str | None:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def node_address(interface: str = "", peer: str | None = None, nodes: int = 1) -> tuple[str, str]:
    """(address, how it was chosen). `peer` is the head's address for ranks ≥ 1, None on the head."""
    if interface:
        return interface_address(interface), f"interface {interface}"
    named = _hostname_address()
    if named and not is_loopback(named):
        return named, "hostname"
    if peer:
        via = route_address(peer)
        if via and not is_loopback(via):
            return via, f"route to {peer}"
    iface = default_route_interface()
    if iface:
        try:
            return interface_address(iface), f"default route ({iface})"
        except AddressError:
            pass
    if nodes > 1:
        raise AddressError(
            f"this node's hostname {socket.gethostname()!r} resolves to {named or 'nothing'} and no route gives "
            "another address: the other nodes could not reach it; set cluster.network_interface (e.g. ib0, eth0)"
        )
    return named or "127.0.0.1", "loopback (one node)"


def interface_env(interface: str) -> dict[str, str]:
    """What NCCL and torch's gloo need to use the same interface as Ray."""
    return {"NCCL_SOCKET_IFNAME": interface, "GLOO_SOCKET_IFNAME": interface} if interface else {}


def interface_of(ip: str) -> str | None:
    """The interface that holds an IPv4 address, if any."""
    for _, name in socket.if_nameindex():
        try:
            if interface_address(name) == ip:
                return name
        except AddressError:
            continue
    return None


def address_env(interface: str, address: str | None, how: str | None) -> dict[str, str]:
    """The interface env for NCCL and gloo: the cluster file's interface, else the one holding an address that
    came from a route. verl makes its groups with `cpu:gloo,cuda:nccl`, and gloo binds to what the hostname
    resolves to (127.0.1.1 on Debian's images) unless told an interface: Ray would join and the first
    collective would hang."""
    if interface:
        return interface_env(interface)
    if address and how and how.startswith(("route to", "default route")):
        return interface_env(interface_of(address) or "")
    return {}
