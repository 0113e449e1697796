"""Where a :class:`~ums_client.UMSClient` keeps its access and refresh tokens."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .models import TokenPair

__all__ = ["MemoryTokenStore", "TokenStore"]


@runtime_checkable
class TokenStore(Protocol):
    """Storage for the current token pair of one login.

    Implementations must be safe to call from the threads that share a client; the client
    serialises refreshes itself, so a store needs no locking beyond keeping each call atomic.
    """

    def load(self) -> TokenPair | None:
        """The current tokens, or ``None`` when not logged in."""
        ...

    def save(self, tokens: TokenPair) -> None:
        """Replace the current tokens (after a login or a refresh)."""
        ...

    def clear(self) -> None:
        """Forget the tokens (after a logout, or when the session is gone)."""
        ...


class MemoryTokenStore:
    """Keeps the tokens in this process's memory (the default)."""

    def __init__(self, tokens: TokenPair | None = None) -> None:
        self._tokens = tokens
        self._lock = threading.Lock()

    def load(self) -> TokenPair | None:
        with self._lock:
            return self._tokens

    def save(self, tokens: TokenPair) -> None:
        with self._lock:
            self._tokens = tokens

    def clear(self) -> None:
        with self._lock:
            self._tokens = None
