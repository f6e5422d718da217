"""The Kubernetes adapter: the only package that imports the ``kubernetes`` client.

Everything else in Barge sees plain dicts and frozen dataclasses, so the phase machine and the
scheduler are tested as pure functions and the client library can be swapped in one place.
"""
