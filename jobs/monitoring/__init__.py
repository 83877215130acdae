"""``aescore nightly``'s pieces: the comparison of two models' scores on the same rows."""
