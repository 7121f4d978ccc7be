"""kptrace: what the kernel's network interrupts cost a server, measured from its own traces."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Trace", "load", "__version__"]


def __getattr__(name: str):
    """`Trace` and `load` (kptrace.api, which imports Polars), imported on first use: importing a
    submodule such as kptrace.cli stays light, so the command decides how its heavy imports run."""
    if name in ("Trace", "load"):
        from kptrace import api

        return getattr(api, name)
    raise AttributeError(f"module 'kptrace' has no attribute {name!r}")
