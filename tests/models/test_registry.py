"""The one table of model and backbone names, as the builders and the recipes read it.

Cheap checks of the tables only: that every registered backbone name builds is
tested where each kind is built by name (tests/models/test_backbone_families.py
for every family under every dilated builder and U-Net,
tests/backbones/test_resnet_torch_layouts.py for the torch ResNet layouts, the
VGG builders' own tests for "vgg16"); the last test here keeps those lists
complete.
"""

import importlib
import inspect

import pytest

import kseg
import tests.recipes  # noqa: F401  (puts recipes/ on sys.path)
from kseg.backbones import registry as backbones
from kseg.models import registry
from tests.models.test_backbone_families import MEMBERS


@pytest.mark.parametrize("model", sorted(registry.MODELS))
def test_recipe_backbone_choices_are_the_registry_names(model):
    common = importlib.import_module("_common")
    kind = registry.MODELS[model].backbone_kind
    extra = common.RECIPE_BACKBONES[kind]
    assert common.backbone_choices(model) == (*extra, *registry.backbone_names(model))


@pytest.mark.parametrize("model", sorted(registry.MODELS))
def test_each_builder_is_the_public_one_and_defaults_to_a_registered_name(model):
    entry = registry.MODELS[model]
    assert getattr(kseg.models, entry.builder.__name__) is entry.builder
    default = inspect.signature(entry.builder).parameters["backbone"].default
    if entry.backbone_kind == "unet":
        assert default is None  # the paper's U-Net
    else:
        assert default in registry.backbone_names(model)


def test_recipe_models_are_the_registry_models():
    common = importlib.import_module("_common")
    assert common.model_names() == sorted(registry.MODELS)
    assert set(common.RECIPE_BACKBONES) == set(registry.BACKBONE_NAMES)


def test_every_registered_name_is_built_by_a_test():
    torch_layouts = {name for name in backbones.RESNETS if "_" in name}
    # The Mix Transformers: tests/backbones/test_mit.py (every variant, `-m large`;
    # the dilated builders' refusal and U-Net on one), tests/models/test_segformer.py.
    assert set(backbones.DILATED) == set(MEMBERS) | torch_layouts | set(backbones.MIT)
    assert set(backbones.VGG) == {"vgg16"}
