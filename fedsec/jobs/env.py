"""The environment a site gives a job's training script: how the script finds its site."""

ENV_SOCKET = "FEDSEC_SOCKET"  # the job's own Unix socket to its site parent
ENV_JOB_ID = "FEDSEC_JOB_ID"
ENV_SITE = "FEDSEC_SITE"
ENV_JOB_TOKEN = "FEDSEC_JOB_TOKEN"  # noqa: S105 - a name, not a secret; the job's credential on that socket: every call carries it
ENV_DATASETS = "FEDSEC_DATASETS"  # JSON {name: path} of the data sets the site operator lets jobs read
