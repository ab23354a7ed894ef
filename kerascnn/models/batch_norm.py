"""Batch-norm constants shared by every model builder (a leaf module: it imports nothing)."""

# Every batch norm in our models, Keras applications included, moves its statistics at PyTorch's
# momentum (0.1, i.e. Keras' 0.9) rather than Keras' 0.99 (docs/design/batch-norm.md).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5  # PyTorch's, which the ported torchvision ResNets were trained with
