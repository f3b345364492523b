"""gatekeeper: an intent gate in front of an LLM customer-service bot."""

__version__ = "0.1.0"
