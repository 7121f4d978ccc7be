"""kptrace: what the kernel's network interrupts cost a server, measured from its own traces."""

from __future__ import annotations

__version__ = "0.1.0"

from kptrace.api import Trace, load  # noqa: E402

__all__ = ["Trace", "load", "__version__"]
