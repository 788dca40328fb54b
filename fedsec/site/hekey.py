"""The site's HE context with its secret key, loaded once, lazily, in the site parent only.

Job processes never see it: the parent's relay (fedsec.site.local) encrypts
and decrypts for them. tenseal is imported only when an HE job first needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fedsec import _fs, limits
from fedsec.errors import HEError


class HEKey:
    """The client context at path (startup/client_context.tenseal), loaded on first use."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._context: Any = None

    def present(self) -> bool:
        return self._path.is_file()

    def context(self) -> Any:
        """The loaded context; raises HEError when the kit has none or it is unusable."""
        with self._lock:
            if self._context is None:
                if not self.present():
                    raise HEError(f"this site's kit has no HE context ({self._path.name}): provision it with HE")
                from fedsec.he.context import load_client_context  # tenseal: only for HE jobs

                data = _fs.read_bounded(self._path, limits.MAX_HE_CONTEXT_BYTES, f"HE context {self._path}", HEError)
                self._context = load_client_context(data, f"HE context {self._path}")
            return self._context
