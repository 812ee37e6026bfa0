"""Built-in device backend plugins."""
