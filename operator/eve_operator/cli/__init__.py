"""The eve-platform command line."""
