"""Declarative IVR flows: a file of nodes (say, menu, gather, transfer, webhook, hangup)."""
