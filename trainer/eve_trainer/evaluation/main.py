"""`eve-eval`: what every rank of an evaluation runs (eve_trainer.evaluation.args has its usage).

Exit codes: 0 done, 2 the user's to fix (unknown bench or key, missing file, malformed question
file, a model that is not an export, no bucket, access denied), 1 retryable (an outage, a lost peer).
"""

from __future__ import annotations

import os
import sys

from eve_contract.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER
from eve_trainer.evaluation.args import UsageError, parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from eve_contract.storage import StorageAccessError, StorageError
    from eve_trainer.evaluation.questions import BenchDataError

    try:
        from eve_trainer.config import ConfigError
        from eve_trainer.distributed import DistInfo

        args = parse(argv)
        dist = DistInfo.from_env()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from eve_trainer.evaluation import evaluate

        evaluate(args.model, args.benches, args.output, rank=dist.rank, world_size=dist.world_size,
                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **args.options)
        return EXIT_OK
    except (UsageError, BenchDataError, StorageAccessError, ConfigError) as err:
        print(f"eve-eval: error: {err}", file=sys.stderr)
        return EXIT_USER
    except StorageError as err:
        print(f"eve-eval: error (retryable): {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        from eve_trainer.distributed import shutdown_quietly

        shutdown_quietly()


if __name__ == "__main__":
    sys.exit(main())
