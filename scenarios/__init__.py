"""Built-in scenario kinds, registered through the ``harness`` entry-point group."""
