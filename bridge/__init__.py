"""hamsa-bridge: Hamsa Arabic text-to-speech on Twilio phone calls."""

__version__ = "0.1.0"
