"""Nakhon's command line and local runner: the one place that knows every component."""

__version__ = "0.1.0"
