"""ctbundles.handlers"""
