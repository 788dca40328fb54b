"""Every size, count and length bound of fedsec, named, in one place.

Anything read from a file a user wrote or from the network is checked against
one of these before memory is taken for it. This module imports nothing.
"""

from __future__ import annotations

# Configuration files.
MAX_CONFIG_FILE_BYTES = 1 << 20  # project.yml, meta.yml, policy files
MAX_PARTICIPANTS = 1000
# Structure of any YAML or JSON document from outside (fedsec._schema): nesting, and digits of one integer
# (Python refuses to convert more than 4300 digits; we refuse long before, with a message naming the place).
MAX_YAML_DEPTH = 32
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 100
MAX_NAME_LENGTH = 64
MAX_HOST_NAMES = 16
MAX_SERVER_REPLICAS = 8  # replicas of the server a project declares; endpoints in a site's or admin's kit

# Startup kits.
MAX_KIT_FILE_BYTES = 64 << 20  # one file under startup/ (HE contexts are the largest)
MAX_SIGNATURE_FILE_BYTES = 1 << 20
MAX_KIT_FILES = 64
MAX_KIT_RECORD_BYTES = 1 << 20  # a checked kit as JSON, from the child that checked it to the parent (fedsec.launch)

# Certificates.
DEFAULT_LEAF_DAYS = 365
DEFAULT_ROOT_DAYS = 3650
MAX_VALIDITY_DAYS = 36500

# The wire. No gRPC message is larger than MAX_MESSAGE_BYTES; payloads travel in chunks.
MAX_MESSAGE_BYTES = 4 << 20
CHUNK_BYTES = 1 << 20
MAX_MODEL_BYTES = 2 << 30  # one model or update in the array container
MAX_HELD_MODELS = 4  # model digests a task request may name as already held by the site (TaskRequest.held_sha256)
MAX_JOB_ARCHIVE_BYTES = 256 << 20  # a submitted job folder or a job result, zipped (weights stored)
MAX_JOB_UNPACKED_BYTES = 1 << 30
MAX_JOB_FILES = 1000
# A zip's central directory: 46 bytes and a name (at most 1024) per entry; read from its end record first.
MAX_ZIP_DIRECTORY_BYTES = MAX_JOB_FILES * 1536
MAX_META_JSON_BYTES = 64 << 10  # meta_json fields, metrics maps
MAX_METRICS = 256
MAX_ERROR_TEXT = 4 << 10  # error text a site reports about a failed script
MAX_SYS_INFO_BYTES = 4 << 10  # the system information a site reports when it registers (a JSON object)
MIN_CHUNK_BYTES = 64 << 10  # every chunk of a payload but its last carries at least this much
MAX_JOB_SIGNATURE_BYTES = 256  # a DER ECDSA P-256 signature is at most 72 bytes; anything near this is not one
MAX_SIGNER_CERT_BYTES = 16 << 10  # one PEM leaf certificate is about 1 KiB

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
MAX_REFUSALS_PER_ROUND = 16  # refused updates a job's progress keeps per round (site, reason)
MAX_REFUSALS_KEPT = 64  # and in all, the newest
MAX_REFUSAL_TEXT = 500  # characters of one refusal's reason
MAX_LEFT_REASON_TEXT = 1000  # characters (the last) of a site's leaving reason the server's job process is sent
MAX_LOG_TEXT = 256 << 10  # a job log returned to an admin, or uploaded by a site at a job's end
MAX_LOG_CHUNK_BYTES = 256 << 10  # one piece of a job's log that a site sends while the script runs
MAX_SITE_JOB_LOG_BYTES = 16 << 20  # a site's log of one job that the server keeps; later pieces are dropped
MAX_SITE_LOG_RUNS = 2 * (MAX_SITE_RESTARTS + 1)  # runs (script starts) of one site's log of one job the server keeps
LOG_TAIL_BYTES = 8 << 10  # the end of each site's log that tail_job_log shows first
MAX_FOLLOWED_LOGS = 4096  # tail_job_log reads a server remembers as audited (a follower's next reads are not)
MAX_LOG_REPLY_BYTES = 1 << 20  # log bytes in one tail_job_log reply (as text at most 3x: under MAX_MESSAGE_BYTES)
LOG_SHIP_SECONDS = 1.0  # how often a site looks for new lines in its running jobs' logs
MAX_AUDIT_ENTRIES = 10_000
SERVER_MIN_FREE_BYTES = 16 << 20  # a workflow that died without its result, with less free: "server disk full"

# Admin logins: bounded per identity (from the verified certificate), never globally, so one admin
# (whatever its role) asking for challenges or opening sessions crowds out only itself.
MAX_CHALLENGES_PER_ADMIN = 16  # login challenges outstanding; a new one evicts that admin's oldest
MAX_SESSIONS_PER_ADMIN = 32  # live sessions; a new one ends that admin's least recently used
MAX_SITES_PER_REQUEST = 1000  # sites an admin names in one command

# The gate in front of each server port (fedsec.transport.gate): lanes with their own workers, calls one
# certificate may hold open in each, and how long a peer may take to send its first message or stall.
GATE_FIRST_MESSAGE_SECONDS = 10.0
GATE_IDLE_SECONDS = 60.0
SITE_LIVENESS_WORKERS = 128  # register, heartbeat (held up to 5 s each), job reports
SITE_LIVENESS_PER_PEER = 4
SITE_TRANSFER_WORKERS = 256  # job fetch, task long polls and downloads, uploads, events
SITE_TRANSFER_PER_PEER = 2 * MAX_RUNNING_JOBS + 4  # a task poll and an upload per job, events, a fetch
ADMIN_SESSION_WORKERS = 32  # logins and commands
ADMIN_SESSION_PER_PEER = 8
ADMIN_TRANSFER_WORKERS = 16  # job uploads and result downloads
ADMIN_TRANSFER_PER_PEER = 2
# Signed jobs: one signature is for one run (fedsec.jobs.signing, fedsec.site.replay).
JOB_CLOCK_SKEW_SECONDS = 300  # a signed submit time may be this far in the future (server and sites)
MAX_SUBMIT_DELAY_SECONDS = 3600  # the server refuses a submission signed longer ago than this
DEFAULT_JOB_MAX_AGE_DAYS = 7  # a site refuses to start a job signed longer ago (site policy: max_job_age_days)
MAX_JOB_MAX_AGE_DAYS = 365  # the largest window a site policy may set; the site keeps its record this long
MAX_SEEN_JOBS = 100_000  # jobs a site remembers having started; when full of recent ones it refuses new jobs

# Homomorphic encryption (fedsec.he).
MAX_HE_CONTEXT_BYTES = 1 << 20  # a serialized TenSEAL context (a client's, with its secret key, is ~62 KB)
MAX_HE_HEADER_BYTES = 4 << 20  # the JSON header of an encrypted model
MAX_HE_CIPHERTEXT_BYTES = 256 << 10  # one serialized ciphertext record (~62 KB at N=4096)
MAX_HE_VALUES = 1 << 27  # values in one encrypted model (~2 GiB of ciphertexts, one value a slot)

# Tracking events.
MAX_EVENTS_PER_BATCH = 1000
MAX_EVENT_TAG = 256
MAX_EVENT_TEXT = 64 << 10
MAX_EVENT_QUEUE = 100_000  # events a SummaryWriter holds before it drops (and says so)
MAX_SPOOL_BYTES = 256 << 20  # a site's unsent events of one job
TRACKING_QUOTA_SITE_BYTES = 64 << 20  # tracking events one site may write for one job; later ones are dropped
TRACKING_QUOTA_JOB_BYTES = 512 << 20  # the same for all the sites of one job together
# A site that comes back after a job ended sends the events still in its spool: the server stores them for this
# long after the job's end (fedsec.workflow.late writes them); later ones are refused for good and the site drops them.
TRACKING_LATE_EVENTS_SECONDS = 7 * 86400
MAX_LATE_EVENTS_BYTES = 256 << 20  # late events of one job stored and not yet written; past it, sites send them later

# A site's own settings (fedsec.site.settings) and its job processes.
MAX_SITE_DATASETS = 64
MAX_DATASET_PATH = 1024
DEFAULT_JOB_RETENTION_DAYS = 30  # a site deletes job folders older than this (site settings: job_retention_days)
MAX_JOB_RETENTION_DAYS = 36500
BACKGROUND_NICE = 10  # how much lower the CPU priority of a parent's one-off background children is (setup)
MAX_WARM_SPEC_BYTES = 256 * 1024  # the job a site hands its warm launcher: script, args, environment (JSON)
WARM_LAUNCHER_DELAY_SECONDS = 5.0  # a site starts its first warm launcher this long after it registered
JOB_TOKEN_BYTES = 32  # the random credential a site gives each job process for its local socket
