"""The server parent process: services, site registry, job store, scheduler."""
