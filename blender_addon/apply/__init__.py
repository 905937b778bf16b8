"""Apply: put a generated picture into the scene as new data-blocks (a World, a camera
backdrop, a tileable material), leaving the user's own Worlds, materials, UVs and images
as they were.

`world` and `tileable` hold the functions; operators call them inside their `execute`, so
each change is part of that operator's one undo step. They raise `ApplyError` before
changing anything when the request cannot be done.
"""


class ApplyError(Exception):
    """An apply that cannot be done; the message says what to change, `field` names the
    argument (or setting) at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# Custom property on every data-block apply creates, saying what it is (a panorama World,
# a backdrop object, a tileable material): operators and tests find ours by it.
MARK = "genart"

__all__ = ["MARK", "ApplyError"]
