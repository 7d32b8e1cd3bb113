"""The Ray Serve application (``serving.app:build_app``)."""
