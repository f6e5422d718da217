"""The ``barge`` operator CLI."""
