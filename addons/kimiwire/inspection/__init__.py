"""Offline views of captured exchanges (sans-IO): responses assembled, shown as text, repairs re-run."""
