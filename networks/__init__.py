"""ctbundles.networks"""
