"""The Tensor Program grammar, shipped as package data (``tensorprog.grammar``)."""
