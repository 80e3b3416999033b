"""Datasets: ImageFolder trees on disk, their transforms, and the embedded mini benchmark."""
