"""The scaling engine: exponents propagated through the program, derived (µP) and classified."""
