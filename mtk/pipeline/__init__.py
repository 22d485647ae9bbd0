"""``mtk run RECIPE``: one TOML file turns a checkpoint into every artifact a release needs.

:mod:`recipe` reads and checks the file, :mod:`plan` makes the step graph and each step's ``mtk`` command,
:mod:`store` keeps finished steps by content hash, :mod:`execute` runs steps locally or on Ray, :mod:`run`
drives a run, and :mod:`manifest` writes ``manifest.json`` and the model cards.
"""
