"""Necks: FPN."""
from .fpn import FPN

__all__ = ['FPN']
