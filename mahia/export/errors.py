"""The export's own error type."""


class ExportError(RuntimeError):
    """A stage could not produce its artifact; the message says which stage and why."""


class MissingPackageError(RuntimeError):
    """A requested format needs a package that is not installed; the message names it (mahia-export exits 2)."""
