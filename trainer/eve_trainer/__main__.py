import sys

from eve_trainer.main import main

sys.exit(main())
