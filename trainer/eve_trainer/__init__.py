"""eve-train: the program every rank of every stage job runs.

Keep this file import-free: the operator and CLI import eve_trainer.config, .storage and
.layout, and must not pull in torch through the package's __init__.
"""

__version__ = "0.1.0"
