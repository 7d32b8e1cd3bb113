"""The ``rayrec`` sub-commands, one module per stage (see :mod:`rayrec.cli`)."""
