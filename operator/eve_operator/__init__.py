"""eve-platform's control plane: the pipeline core, backends, the kopf operator and the CLI.

torch-free by design: the operator image is slim and `eve-platform --help` is fast.
"""

__version__ = "0.1.0"
