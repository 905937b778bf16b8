"""Operators: one file per user action."""

from .check_sidecar import GENART_OT_check_sidecar

CLASSES = (GENART_OT_check_sidecar,)
