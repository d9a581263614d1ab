"""giftrelay: a real-time gift relay for live streams."""

__version__ = "0.1.0"
