"""`studio-imagegen`: a terminal client for trying the worker by hand."""
