"""Tools built on open checkpoints: mirror to zarr, export to raw files, verify two copies, distributed loads."""
