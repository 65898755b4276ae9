"""What the claim raises. Each message is one line, meant to be shown as it is."""


class Refused(ValueError):
    """The claim would not hold with this configuration (a window, an override, a mixed fleet,
    a store that cannot run it). Nothing was started; the message says what to change. A
    ValueError: raised as tasks.py is imported, `pynenc --app ... runner start` reports it in
    one line ("Failed to load application: ...") and exits 1, with no traceback."""


class UntestedVersion(Refused):
    """The installed pynenc (or pynenc-redis) is not a version the claim was tested against."""


class Fenced(Exception):
    """The provider refused a call by its fencing token: a newer claim of the key came first,
    so this call was not applied. Raise it from the task when the provider says so, and the
    invocation fails (or retries, where the task says so): a refused call is never a success."""
