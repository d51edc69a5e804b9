"""The sync daemon: watches drop folders, uploads what lands there, serves the Files API on a socket.

Modules: ``journal`` (what each local file became), ``uploader`` (the worker pool), ``watcher``
(watchdog events), ``api`` (FastAPI on uvicorn), ``service`` (wiring and signals) and ``client``
(the CLI's side of the socket). Only ``watcher`` imports watchdog; nothing here imports ``fs/``.
"""
