"""The wire: protobuf messages (fedsec.proto and its committed generated code),
the array container (dtype + shape + raw bytes, never pickle), chunked streams, and
a server job's state records as messages (job_state.py)."""
