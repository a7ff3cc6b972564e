"""Why an exported artifact cannot be used: shared by the code that writes artifacts (export/)
and the code that runs them (the service, the benchmarks)."""


class ExportError(RuntimeError):
    """An export that could not be produced, did not verify, or cannot be read back."""


class BackendUnavailable(RuntimeError):
    """A runtime that cannot load here (missing package, no GPU, no file); the message says why."""
