"""Every size, count and length bound of fedsec, named, in one place.

Anything read from a file a user wrote or from the network is checked against
one of these before memory is taken for it. This module imports nothing.
"""

from __future__ import annotations

# Configuration files.
MAX_CONFIG_FILE_BYTES = 1 << 20  # project.yml, meta.yml, policy files
MAX_PARTICIPANTS = 1000
MAX_NAME_LENGTH = 64
MAX_HOST_NAMES = 16

# Startup kits.
MAX_KIT_FILE_BYTES = 64 << 20  # one file under startup/ (HE contexts are the largest)
MAX_SIGNATURE_FILE_BYTES = 1 << 20
MAX_KIT_FILES = 64

# Certificates.
DEFAULT_LEAF_DAYS = 365
DEFAULT_ROOT_DAYS = 3650
MAX_VALIDITY_DAYS = 36500
