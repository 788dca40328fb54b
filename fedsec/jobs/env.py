"""The environment a site gives a job's training script: how the script finds its site."""

ENV_SOCKET = "FEDSEC_SOCKET"  # the site parent's Unix socket
ENV_JOB_ID = "FEDSEC_JOB_ID"
ENV_SITE = "FEDSEC_SITE"
ENV_HE_CONTEXT = "FEDSEC_HE_CONTEXT"  # the site's HE context (with the secret key), when the project has HE
ENV_DATASETS = "FEDSEC_DATASETS"  # JSON {name: path} of the data sets the site operator lets jobs read
