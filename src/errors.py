"""The project's two error kinds, imported by every layer; this module imports nothing.

Scripts turn them into one line on stderr (:func:`src.cli.run_main`): :class:`DataError` exits 2,
like argparse does for a bad flag; :class:`TrainingError` exits 1.
"""


class DataError(Exception):
    """The input as a whole is wrong (missing file, bad column, empty split, a bad argument value).

    The message is one line naming the file (and line). ``param`` names the argument at fault (a
    function's parameter name, e.g. ``"pretrained_weights"``): models and data modules speak of their
    own parameters, and only the command-line layer turns ``param`` into its flag (``--pretrained-weights``).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses); checkpoints already written stay."""
