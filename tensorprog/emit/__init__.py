"""The code generator: IR + exponents -> a plain PyTorch module, and loading its source."""
