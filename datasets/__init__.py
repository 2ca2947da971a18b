"""ctbundles.datasets: published dataset layouts, each a module with a writer and ``build_datalist``:
``nifti_folder`` (imagesTr/labelsTr + datalist.json), ``orcascore`` (MetaImage, per-artery labels) and
``isles2018`` (the ISLES 2018 challenge folders); ``datalist_io`` holds the shared fold and datalist
code; ``scan_folder`` lists the scans of a folder for the bundles' ``inference.json``; ``slab_dataset``
the in-memory 2.5D sampler of the DenseRAUnet bundle.
"""

from ctbundles.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SlabDataset": "slab_dataset",
})
