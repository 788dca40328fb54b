"""The server's job process: the round driver (sampling, deadlines, checkpoints), strategies, update codecs.

It runs no code from the job: the initial model is data (an array
container), and aggregation is numpy. It talks only to the server parent,
over a Unix socket, and reaches the job's state only through it (link.py:
JobStateLink); its workspace holds only models (checkpoints, the result) and
its tracking database.
"""
