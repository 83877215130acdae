"""``aescore train``'s pieces: its config, the per-worker loop, the in-process path, the statistics pass, model banks, the result."""
