"""TF Serving deployment: container and configs, a REST + gRPC client, a local server.

This package reads artifacts only; it never imports pipeline/, models/, export/
or edge/.
"""
