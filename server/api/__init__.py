"""Front doors: one subpackage per transport; each decodes, calls the data plane, encodes."""
