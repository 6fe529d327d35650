"""The one exception type the tool raises for bad input: the CLI and plugin print it as one line."""


class AttnalignError(Exception):
    """A user-facing error whose message says what was wrong and how to fix it."""


class ModelUnavailable(AttnalignError):
    """A model that failed to load, or an API that kept failing: its other items are not tried."""
