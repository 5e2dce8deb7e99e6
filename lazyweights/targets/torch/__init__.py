"""The PyTorch target: checkpoint tensors into a module's parameters and buffers, with layout conversions."""
