"""The ``flux-service`` command (``cli.main:main``). The top layer: it may import app/, training/ and
pipelines/; nothing imports it (import-linter checks this in ``make test``)."""
