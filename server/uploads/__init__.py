"""An upload from bytes to a published version: formats, converter children, parity, quantization."""
