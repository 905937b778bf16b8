"""The add-on's side of the sidecar connection, free of `bpy`.

The protocol itself is the vendored copy of `genart_core.protocol` that the build puts in
`_vendor/genart_protocol` (never edited by hand); `settings` resolves which sidecar to use.
"""

from .._vendor.genart_protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Client,
    ConnectionInfo,
    GenartError,
    default_state_dir,
)
from .settings import CONNECT, LAUNCH, EffectiveSettings, effective_settings

__all__ = [
    "CONNECT",
    "LAUNCH",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "Client",
    "ConnectionInfo",
    "EffectiveSettings",
    "GenartError",
    "default_state_dir",
    "effective_settings",
]
