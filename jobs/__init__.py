"""aescore's jobs: the entry points and what they share."""

import time

STARTED_AT = time.monotonic()
"""When this process first imported ``jobs``: the start of a job's process, to the first import."""
