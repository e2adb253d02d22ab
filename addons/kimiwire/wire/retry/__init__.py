"""Asking the upstream again: when and how long to wait, the turn's verdict, what the client gets."""
