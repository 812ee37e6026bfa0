"""kvd's HTTP door: KServe v2 REST (+ Triton's binary extension) and TF Serving REST on one port."""
