"""Rewriters shipped with tracemark, registered through the ``tracemark.rewriters`` entry points."""
