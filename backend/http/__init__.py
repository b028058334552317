"""The HTTP doors: label-studio-ml's Flask app, its glue, the edge (auth, limits) and ``/health``."""
