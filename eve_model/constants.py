"""Token constants of the reference (``EVEv1/eve/constants.py``)."""

IGNORE_INDEX = -100  # label value ignored by the LM loss (image positions, prompts, padding)
IMAGE_TOKEN_INDEX = -200  # placeholder id in input_ids, replaced by the visual tokens
DEFAULT_IMAGE_TOKEN = "<image>"
