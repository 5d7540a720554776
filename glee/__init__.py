"""GLEE-Net, the method: model, losses, metrics, face geometry, dataset readers and the
synthetic face world. Pure PyTorch / NumPy / SciPy / OpenCV: never imports ray."""

__version__ = "0.1.0"
