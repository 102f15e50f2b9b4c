"""The Tensor Program IR: its instructions, the Program holding them, its verifier and text."""
