"""ctbundles.metrics"""
