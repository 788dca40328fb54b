"""The client parent process of a site: connect, register, heartbeat, run job processes.

It never imports torch: it moves bytes between the server and the site's
training scripts, and starts and stops those scripts by pid.
"""
