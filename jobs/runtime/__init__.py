"""The process around every job: the CLI's one-line contract and exit codes, signals, flags and configs, progress lines, starting or joining Ray."""
