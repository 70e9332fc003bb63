"""Inbound SMTP and HTTP endpoints: what comes back to mailpipe (issue 20)."""
