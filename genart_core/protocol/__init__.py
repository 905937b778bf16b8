"""The genart wire protocol and its clients: one source, stdlib only.

The Blender extension carries a vendored copy of this package (a test keeps it identical),
so nothing here may import anything outside the standard library.
"""

from .client import Client, Event, Reply, ThreadedClient
from .connection import Address, ConnectionInfo, default_state_dir
from .errors import GenartError
from .framing import PROTOCOL_MAJOR, PROTOCOL_MINOR, Attachment, FrameStream, Message

__all__ = [
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "Address",
    "Attachment",
    "Client",
    "ConnectionInfo",
    "Event",
    "FrameStream",
    "GenartError",
    "Message",
    "Reply",
    "ThreadedClient",
    "default_state_dir",
]
