"""The contract between eve-platform's processes: the CLI, the operator, the node launcher and
every trainer rank. torch-free and dependency-light (stdlib, plus pydantic where a module says so),
so that the operator image and `eve-platform --help` stay slim.

One definition each, imported by everyone who needs it:
- `eve_contract.names`: stage and model-preset names, the default chains.
- `eve_contract.exit_codes`: exit codes and what each means.
"""
