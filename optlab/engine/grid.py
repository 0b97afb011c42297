"""STUB: replaced by the engine work (issue 3)."""


class GridResult:
    pass


def run_grid(*args, **kwargs):
    raise NotImplementedError
