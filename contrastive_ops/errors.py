"""The package's own exception types, below every module that raises them (the backend registry,
the extension's loader, the backends), so that none of those imports another for its errors."""
from __future__ import annotations


class BackendUnavailableError(ValueError):
    """The requested backend cannot run here; the message says why and what would fix it."""
