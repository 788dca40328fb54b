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

# The wire. No gRPC message is larger than MAX_MESSAGE_BYTES; payloads travel in chunks.
MAX_MESSAGE_BYTES = 4 << 20
CHUNK_BYTES = 1 << 20
MAX_MODEL_BYTES = 2 << 30  # one model or update in the array container
MAX_JOB_ARCHIVE_BYTES = 256 << 20  # a submitted job folder or a job result, zipped (weights stored)
MAX_JOB_UNPACKED_BYTES = 1 << 30
MAX_JOB_FILES = 1000
MAX_META_JSON_BYTES = 64 << 10  # meta_json fields, metrics maps
MAX_METRICS = 256
MAX_ERROR_TEXT = 4 << 10  # error text a site reports about a failed script

# The array container.
MAX_ARRAY_HEADER_BYTES = 4 << 20
MAX_TENSORS = 10_000
MAX_TENSOR_NAME = 256
MAX_TENSOR_DIMS = 8

# Jobs.
MAX_JOB_NAME = 64
MAX_ROUNDS = 100_000
MAX_LIST_JOBS = 10_000
MAX_RUNNING_JOBS = 16
MAX_SITE_RESTARTS = 100  # times one site may restart a job's script (workflow.max_site_restarts)
MAX_LOG_TEXT = 256 << 10  # a job log returned to an admin, or uploaded by a site at a job's end
MAX_AUDIT_ENTRIES = 10_000

# Homomorphic encryption (fedsec.he).
MAX_HE_CONTEXT_BYTES = 1 << 20  # a serialized TenSEAL context (a client's, with its secret key, is ~62 KB)
MAX_HE_HEADER_BYTES = 4 << 20  # the JSON header of an encrypted model
MAX_HE_CIPHERTEXT_BYTES = 256 << 10  # one serialized ciphertext record (~62 KB at N=4096)
MAX_HE_VALUES = 1 << 28  # values in one encrypted model (~2 GiB of ciphertexts)

# Tracking events.
MAX_EVENTS_PER_BATCH = 1000
MAX_EVENT_TAG = 256
MAX_EVENT_TEXT = 64 << 10
MAX_EVENT_QUEUE = 100_000  # events a SummaryWriter holds before it drops (and says so)
MAX_SPOOL_BYTES = 256 << 20  # a site's unsent events of one job
