"""kvserve.client: the Python client and the ``kvctl`` CLI. Imports neither TensorFlow nor OpenVINO."""

from kvserve.client.client import Client, UploadProgress

__all__ = ["Client", "UploadProgress"]
