"""kvserve.plugins: the pluggy contract and the built-in converter and backend plugins."""
