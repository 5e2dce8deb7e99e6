"""Read: the values of one weight, or a region of it, per storage layout; and weights as dask arrays.

:mod:`.hdf5` decodes HDF5 chunks (and falls back to h5py for filters without
a codec), :mod:`.zarr` reads zarr chunk objects, :mod:`.constant` gives
compact and fill values, :mod:`.dask` wraps weights as lazy dask arrays.
The executor (:mod:`lazyweights.stream`) schedules these reads.
"""
