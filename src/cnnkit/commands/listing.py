"""``cnnkit recipes``, ``cnnkit models``, ``cnnkit datasets``: what there is to choose from."""

from __future__ import annotations

from typing import Any


def recipes(args: Any) -> None:
    from cnnkit.recipes import list_recipes, load_recipe

    for name in list_recipes():
        recipe = load_recipe(name)
        print(f"{name:<18} {recipe.get('description', '')}")
        print(f"{'':<18} expected: {recipe.get('expected', 'n/a')}")


def models(args: Any) -> None:
    import torch

    from cnnkit.models import count_parameters, create_model, list_models, model_info

    print(f"{'model':<14} {'parameters':>12}  {'input':<10} description")
    for name in list_models():
        info = model_info(name)
        with torch.device("meta"):  # counts only: no memory, no init time
            model = create_model(name)
        size = "x".join(str(v) for v in (info.default_in_chans, *info.default_input_size))
        print(f"{name:<14} {count_parameters(model):>12,}  {size:<10} {info.description}")
    print("(parameters for 10 classes at the default input size)")
    print("timm:NAME      any timm model, e.g. timm:efficientnet_lite0 (pretrained: add --pretrained)")
    print("tv:NAME        any torchvision classification model, e.g. tv:resnet18, tv:vgg16_bn")
    print("FILE.py:NAME   your own model class or function (or package.module:NAME), e.g. my_models.py:MyNet")


def datasets(args: Any) -> None:
    from cnnkit.data.datasets import dataset_info, list_datasets

    for name in list_datasets():
        print(f"{name:<18} {dataset_info(name).description}")
    print(f"{'PATH':<18} a class-per-folder tree (optionally train/ val/ test/) or a CSV with path,label columns")
