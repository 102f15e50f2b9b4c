"""The package's version: one string, read by the facade and by `tensorprog --version` when the
package runs from a source tree that was never installed."""

__version__ = "0.1.0"
