"""The export's own error type."""


class ExportError(RuntimeError):
    """A stage could not produce its artifact; the message says which stage and why."""
