"""ctbundles: MONAI bundles reproducing published CT methods.

Installed, the design card's top-level folders import as sub-packages:
``ctbundles.transforms`` (CT input layer, calcium scoring), ``ctbundles.networks``,
``ctbundles.handlers`` (ignite handlers), ``ctbundles.synthetic`` (synthetic CT cohorts),
``ctbundles.datasets`` (published dataset layouts and datalists) and ``ctbundles.metrics``.
"""

__version__ = "0.1.0"
