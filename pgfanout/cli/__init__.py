"""The command layer: the ``pgfanout`` command and its reports; the only code that imports the daemons."""
