"""Moved to eve_contract.exit_codes (the one definition); kept as an alias while callers move."""

from eve_contract.exit_codes import *  # noqa: F403
from eve_contract.exit_codes import __all__  # noqa: F401
