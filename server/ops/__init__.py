"""Running kvd safely: health, metrics, auth, security, limits, lifecycle, logs, fault injection."""
