"""ctbundles.datasets: published dataset layouts, each a module with a writer and `build_datalist`:
`nifti_folder` (imagesTr/labelsTr + datalist.json), `orcascore` (MetaImage, per-artery labels) and
`isles2018` (the ISLES 2018 challenge folders); `datalist_io` holds the shared atomic JSON and fold code.
"""
