"""The contract between eve-platform's processes: the CLI, the operator, the node launcher and
every trainer rank. torch-free and dependency-light (stdlib; pydantic's types in `errors`; boto3,
imported lazily, in `storage`), so that the operator image and `eve-platform --help` stay slim.
import-linter keeps it so (pyproject.toml [tool.importlinter], docs/contracts.md).

One definition each, imported by everyone who needs it:
- `eve_contract.names`: stage and model-preset names, the default chains.
- `eve_contract.exit_codes`: exit codes, failure classes, which code decides a failed job.
- `eve_contract.topology`: the env-to-topology rule (launcher, trainer, local backend), free port, GPU count.
- `eve_contract.naming`: child job names, labels, the pipeline-name rule.
- `eve_contract.layout`: where checkpoints, exports, stage-complete manifests and heartbeats live.
- `eve_contract.storage`: object stores and the one S3 client policy.
- `eve_contract.tracking_names`: MLflow tag, metric and alias names.
- `eve_contract.errors`: how a validation error reads; `eve_contract.dicts`: deep_merge.
"""
