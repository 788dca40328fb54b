"""Tracking: the events a training script's SummaryWriter logs, and (in receivers/) where the server writes them.

`events` is shared by the client, the site and the server: the Event
dataclass, its wire and spool forms, and their validation. It never imports
grpc, mlflow or numpy; only `receivers/`, used by the server's job process
alone, talks to a tracking backend.
"""
