"""The production broker: Mosquitto configuration, ACL and per-device credentials.

``mosquitto.conf`` and ``aclfile`` in this folder are the configuration; `write_credentials`
produces the password file for every machine of the ledger and the service accounts.
"""

from ingest.broker.credentials import (
    ACL_FILE,
    COMMANDER_USER,
    INGEST_USER,
    MOSQUITTO_CONF,
    CredentialSet,
    mosquitto_hash,
    plan_credentials,
    write_credentials,
)

__all__ = [
    "ACL_FILE",
    "COMMANDER_USER",
    "INGEST_USER",
    "MOSQUITTO_CONF",
    "CredentialSet",
    "mosquitto_hash",
    "plan_credentials",
    "write_credentials",
]
