"""The one exception type for problems a user can fix (bad names, missing data, bad options)."""


class KerascnnError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> KerascnnError:
    """Error for an unknown registry name, listing the valid ones."""
    return KerascnnError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
