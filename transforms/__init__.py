"""ctbundles.transforms"""
