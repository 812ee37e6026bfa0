"""Which models exist and what is loaded: the repository on disk and the model manager."""
