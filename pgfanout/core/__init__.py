"""The pure core: what every part of pgfanout decides and describes, without I/O of its own."""
