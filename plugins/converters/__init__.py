"""Built-in converter plugins."""
