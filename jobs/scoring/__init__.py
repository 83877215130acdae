"""``aescore score``'s pieces: its config, the local path, the Ray Data row scorer, the run summary, model banks."""
