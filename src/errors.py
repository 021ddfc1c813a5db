"""The project's two error kinds, imported by every layer; this module imports nothing.

Scripts turn them into one line on stderr (:func:`src.cli.run_main`): :class:`DataError` exits 2,
like argparse does for a bad flag; :class:`TrainingError` exits 1.
"""


class DataError(Exception):
    """The input as a whole is wrong (missing file, bad column, empty split, a bad argument value).

    The message is one line naming the file (and line) or the parameter. Models and data modules
    name their own parameters; only the command-line layer speaks of flags.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses); checkpoints already written stay."""
