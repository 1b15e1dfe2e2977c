"""Kiban (基盤): an open platform for the identity infrastructure local governments share."""

__version__ = "0.1.0"
