"""The ``atelier server`` process."""
