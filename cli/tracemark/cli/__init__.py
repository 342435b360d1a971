"""The ``tracemark`` command line."""
