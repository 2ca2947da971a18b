"""ctbundles.synthetic"""
