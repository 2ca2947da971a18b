"""ctbundles.datasets"""
