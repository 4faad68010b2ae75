"""alrao_tune: screen architectures cheaply with Alrao, then tune only the best."""

__version__ = "0.1.0"
