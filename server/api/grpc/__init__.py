"""gRPC servicers and interceptors: KServe v2 inference, kvserve.v1."""
