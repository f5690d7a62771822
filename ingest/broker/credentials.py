"""Per-device broker credentials from the equipment ledger.

Each active machine of the ledger gets a user named by its device id and a random password,
so does each gateway the ledger puts machines behind, and the service accounts (``_ingest``,
``_commander``). The ACL is the static ``aclfile`` plus, per gateway, the machines it may
publish for and whose commands it may read (firmware-protocol sections 2.2 and 12).

Passwords already issued are kept when the files are written again (machines in the field hold
them), machines no longer active are dropped, and new ones are added, so the command can run
after every ledger import.

Outputs, in one directory:
  aquafleet.passwd       Mosquitto password file (PBKDF2-SHA512, Mosquitto's ``$7$`` format)
  aquafleet.acl          the ACL: ``aclfile`` and the gateways' sections
  credentials.csv        user,password in clear, for provisioning: mode 0600, keep it secret
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from firmware_protocol import is_valid_device_id

from ingest.errors import CredentialsError

HERE = Path(__file__).resolve().parent
MOSQUITTO_CONF = HERE / "mosquitto.conf"
ACL_FILE = HERE / "aclfile"

INGEST_USER = "_ingest"
COMMANDER_USER = "_commander"
SERVICE_USERS = (INGEST_USER, COMMANDER_USER)

PASSWD_NAME = "aquafleet.passwd"
ACL_NAME = "aquafleet.acl"
CLEAR_NAME = "credentials.csv"

# What mosquitto_passwd 2.x writes: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt.
_ITERATIONS = 101
_SALT_BYTES = 12


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """The password file entry (after ``user:``) for ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class CredentialSet:
    """Users and clear passwords, and what changed against the previous set."""

    passwords: Mapping[str, str]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = field(default=())


UPLINK_KINDS = ("birth", "telemetry", "event", "status", "ack")


def gateway_acl(gateways: Mapping[str, Iterable[str]]) -> str:
    """ACL sections for gateways: each may publish and read commands for its machines only."""
    lines: list[str] = []
    for gateway in sorted(gateways):
        lines += [
            "",
            f"# gateway {gateway}: the machines the ledger puts behind it",
            f"user {gateway}",
        ]
        for machine in sorted(set(gateways[gateway])):
            lines += [f"topic write aquafleet/v1/{machine}/{kind}" for kind in UPLINK_KINDS]
            lines.append(f"topic read aquafleet/v1/{machine}/cmd")
    return "\n".join(lines) + "\n" if lines else ""


def plan_credentials(devices: Iterable[str], existing: Mapping[str, str]) -> CredentialSet:
    """Passwords for ``devices`` (and gateways) and the service accounts, keeping ``existing``."""
    wanted: list[str] = []
    for device_id in devices:
        if not is_valid_device_id(device_id):
            raise CredentialsError(f"device id {device_id!r} cannot be a broker user name")
        wanted.append(device_id)
    passwords: dict[str, str] = {}
    added: list[str] = []
    kept: list[str] = []
    for user in (*SERVICE_USERS, *sorted(set(wanted))):
        if user in existing:
            passwords[user] = existing[user]
            kept.append(user)
        else:
            passwords[user] = new_password()
            added.append(user)
    removed = tuple(sorted(set(existing) - set(passwords)))
    return CredentialSet(passwords, tuple(added), removed, tuple(kept))


def read_clear(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        rows = list(reader)
    if rows and rows[0] == ["user", "password"]:
        rows = rows[1:]
    try:
        return {user: password for user, password in rows}
    except ValueError:
        raise CredentialsError(f"{path}: not a user,password file") from None


def write_credentials(
    out_dir: Path, devices: Iterable[str], gateways: Mapping[str, Iterable[str]] | None = None
) -> CredentialSet:
    """Write the password file, the ACL and the clear credentials into ``out_dir``.

    ``gateways`` maps a gateway id to the machines behind it.
    """
    gateways = gateways or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_path = out_dir / CLEAR_NAME
    plan = plan_credentials([*devices, *gateways], read_clear(clear_path))
    _write_private(
        clear_path,
        "user,password\n" + "".join(f"{u},{p}\n" for u, p in plan.passwords.items()),
    )
    _write_private(
        out_dir / PASSWD_NAME,
        "".join(f"{u}:{mosquitto_hash(p)}\n" for u, p in plan.passwords.items()),
    )
    (out_dir / ACL_NAME).write_text(ACL_FILE.read_text() + gateway_acl(gateways))
    return plan


def _write_private(path: Path, text: str) -> None:
    # Written under a temporary name and renamed, so a reader never sees half a file, and
    # created 0600 so the secrets are never readable by others, not even for a moment.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
