"""The port map of each host, derived from the inventory: what listens where.

Only the proxy publishes host ports: its status page, every published app service and
every published infrastructure service. Reserved ports are kept free for later use.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Inventory


@dataclass(frozen=True)
class PortEntry:
    host: str
    port: int
    kind: str  # status, reserved, infra, app
    label: str  # what a person reads: "quickpulse prod", "Grafana"
    target: str  # container:port behind nginx, or "" for nginx itself
    key: str  # where the inventory sets it


def port_map(inventory: Inventory) -> list[PortEntry]:
    """Every host port of every host, infrastructure first, each sorted by port."""
    entries: list[PortEntry] = []
    infra = inventory.infra
    if infra is not None:
        entries += infra_ports(inventory)
    for d in inventory.deployments():
        for s in d.services:
            if s.publish is not None:
                entries.append(
                    PortEntry(
                        d.host_name,
                        s.publish,
                        "app",
                        f"{d.app_name} {d.env} ({s.name})",
                        f"{s.container}:{s.port}",
                        f"apps.{d.app_name}.services.{s.name}.publish.{d.env}",
                    )
                )
    return entries


def infra_ports(inventory: Inventory) -> list[PortEntry]:
    infra = inventory.infra
    nginx = infra.nginx
    entries = [
        PortEntry(
            infra.host,
            nginx.status_port,
            "status",
            "ops portal and /health",
            "",
            "infra.nginx.status_port",
        )
    ]
    for text, purpose in sorted(nginx.reserved_ports.items()):
        if text.isdigit():
            entries.append(
                PortEntry(
                    infra.host,
                    int(text),
                    "reserved",
                    purpose,
                    "",
                    f"infra.nginx.reserved_ports.{text}",
                )
            )
    for name, svc in sorted(infra.services.items()):
        if svc.publish is not None:
            entries.append(
                PortEntry(
                    infra.host,
                    svc.publish,
                    "infra",
                    f"{name} ({svc.stack})",
                    f"{svc.container_name(name)}:{svc.port}",
                    f"infra.services.{name}.publish",
                )
            )
    return entries


def published_ports(inventory: Inventory, host: str) -> list[int]:
    """The host ports the proxy container listens on (reserved ones excluded)."""
    return sorted({e.port for e in port_map(inventory) if e.host == host and e.kind != "reserved"})


def table(inventory: Inventory) -> list[str]:
    """The port map as the text table ``fab ports`` prints."""
    rows = sorted(port_map(inventory), key=lambda e: (e.host, e.port))
    width = max((len(e.label) for e in rows), default=10)
    out = [f"{'host':<8} {'port':>5}  {'what':<{width}}  {'nginx forwards to':<26} kind"]
    for e in rows:
        target = e.target or ("(nginx itself)" if e.kind == "status" else "(nothing listens)")
        out.append(f"{e.host:<8} {e.port:>5}  {e.label:<{width}}  {target:<26} {e.kind}")
    return out
