"""eve_model defines a configuration for exactly the preset names of the contract."""

from eve_contract.names import MODEL_PRESETS
from eve_model.presets import PRESETS


def test_the_model_has_a_configuration_for_each_contract_preset_and_no_other() -> None:
    assert tuple(PRESETS) == MODEL_PRESETS
