"""Training methods as LightningModules. They see a model and batches, never a dataset.

Adding a method is one module here plus one config in conf/method/.
"""
