"""Errors the library raises for the user to read (their message is shown as is)."""


class TrainingError(RuntimeError):
    """Training ran but produced no usable model (NaN loss, no data reached the model)."""
