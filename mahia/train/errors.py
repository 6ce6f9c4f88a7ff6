"""The training error type, shared by both phases."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, mismatched resume); the message says what and where."""
