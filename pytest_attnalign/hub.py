"""Whether the Hugging Face hub can answer, decided in one short probe before any download.

transformers retries an unreachable hub for about 50 s per load, with a log line per retry; asking
first turns that into one line at once, and a model already in the local hub cache is then loaded
from there without touching the network.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"


def offline() -> bool:
    """The user said so (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to ``HF_ENDPOINT``; a configured proxy is trusted instead of probed."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def why_unreachable() -> str | None:
    """``None`` when the hub may be asked, else the reason in words."""
    if offline():
        return "offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    if not reachable():
        return f"the hub ({os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT}) is unreachable"
    return None


def in_local_cache(repo_id: str) -> bool:
    """Whether the model's config is in the local hub cache (so it can load without the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed repo id and the like: not cached
        return False
