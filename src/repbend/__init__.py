"""repbend: Representation Bending for LLM safety."""
__version__ = "0.1.0"
