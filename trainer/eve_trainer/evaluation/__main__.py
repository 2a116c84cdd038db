import sys

from eve_trainer.evaluation.main import main

sys.exit(main())
