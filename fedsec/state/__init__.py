"""The server's state: one typed interface, two backends, and a blob store.

    interface.py  StateStore (records) and BlobStore (bytes, streamed): the Protocols
    records.py    the frozen dataclasses and enums that cross the interface
    progress.py   the admins' progress document, made from the records (no I/O)
    _sql.py       the one implementation over SQL and the versioned schema (migrations)
    sqlite.py     the embedded backend (default): <server kit>/store/jobs.db
    postgres.py   PostgreSQL through psycopg 3 (the postgres extra)
    blobs.py      FolderBlobs: the blob store in a folder (local, or shared by replicas)
    settings.py   the kit's `store` setting, its DSN file, open_state()

This package sits beside the building blocks: it imports only the foundation
(errors, limits, _fs, _schema, _deps), never grpc, a process package, or the
job's code. It decides nothing about jobs beyond the rules of their records.
"""
