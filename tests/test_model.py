"""faceattr.model: the write-up's network, any torchvision head, freezing, and where weights come from."""
from __future__ import annotations

from urllib.error import URLError

import pytest
import torch

from faceattr.run.config import RunConfig
from faceattr.model import (
    WeightsUnavailableError,
    build_model,
    head_name,
    model_from_config,
    trainable_parameters,
)



def _input(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 218, 178)


def test_default_is_resnext50_with_40_outputs_and_six_children_frozen():
    model = build_model(weights="none")
    assert type(model).__name__ == "ResNet" and model.layer1[0].conv2.groups == 32  # ResNeXt 32x4d
    assert isinstance(model.fc, torch.nn.Linear) and (model.fc.in_features, model.fc.out_features) == (2048, 40)
    children = [name for name, _ in model.named_children()]
    assert children[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    for name, parameter in model.named_parameters():
        frozen = name.split(".")[0] in children[:6]
        assert parameter.requires_grad is not frozen, name
    trainable = {id(p) for p in trainable_parameters(model)}
    expected = {id(p) for module in (model.layer3, model.layer4, model.fc) for p in module.parameters()}
    assert trainable == expected


def test_output_shape_on_celeba_sized_images():
    model = build_model("resnet18", "none", 6).eval()
    with torch.no_grad():
        assert model(_input()).shape == (2, 40)


def test_frozen_batchnorm_keeps_updating_running_stats_in_train_mode():
    # The write-up's behaviour, documented in faceattr.model: requires_grad=False only.
    model = build_model("resnet18", "none", 6)
    before = model.bn1.running_mean.clone()
    model.train()
    model(_input(4))
    assert not model.bn1.weight.requires_grad
    assert not torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize("arch, head", [
    ("mobilenet_v3_small", "classifier.3"),
    ("squeezenet1_1", "classifier.1"),
    ("regnet_y_400mf", "fc"),
    ("densenet121", "classifier"),
])
def test_any_torchvision_classifier_gets_a_40_output_head(arch, head):
    model = build_model(arch, "none", freeze_children=1).eval()
    assert head_name(model) == head
    with torch.no_grad():
        assert model(_input()).shape == (2, 40)
    assert all(p.requires_grad for p in model.get_submodule(head).parameters())


def test_bad_arch_and_freeze_count_are_clear_errors():
    with pytest.raises(ValueError, match="'resnet1800' is not a torchvision classification model"):
        build_model("resnet1800", "none")
    with pytest.raises(ValueError, match=r"freeze_children: 11 .* 10 top-level children of resnet18 \(conv1, bn1"):
        build_model("resnet18", "none", freeze_children=11)
    with pytest.raises(ValueError, match="freezes every parameter"):
        build_model("resnet18", "none", freeze_children=10)
    with pytest.raises(FileNotFoundError, match="'imagenett' is not 'imagenet', 'none' or an existing"):
        build_model("resnet18", "imagenett")


def test_model_from_config_follows_the_config():
    config = RunConfig(arch="resnet18", weights="none", freeze_children=5)  # conv1, bn1, relu, maxpool, layer1
    model = model_from_config(config)
    assert model.fc.out_features == 40
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


def test_weights_from_a_full_model_state_dict_file(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", "none", 0)
    path = tmp_path / "full.pt"
    # As a training checkpoint would hold it, with DataParallel's prefix on the keys.
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(2)
    loaded = build_model("resnet18", str(path), 6)
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert not loaded.layer2[0].conv1.weight.requires_grad  # still frozen after loading


def test_weights_from_a_backbone_file_keep_a_fresh_head(tmp_path):
    from torchvision import models

    torch.manual_seed(3)
    imagenet_like = models.resnet18(weights=None)  # a 1000-class head, like ImageNet weights
    path = tmp_path / "backbone.pt"
    torch.save(imagenet_like.state_dict(), path)
    model = build_model("resnet18", str(path), 6)
    assert torch.equal(model.conv1.weight, imagenet_like.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, imagenet_like.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (40, 512)

    backbone_only = {k: v for k, v in imagenet_like.state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone_only, path)
    assert torch.equal(build_model("resnet18", str(path), 6).layer3[0].conv1.weight, imagenet_like.layer3[0].conv1.weight)


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    from torchvision import models

    path = tmp_path / "mobilenet.pt"
    torch.save(models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="mobilenet.pt: .* do not belong to this model"):
        build_model("resnet18", str(path))

    path = tmp_path / "partial.pt"
    state = models.resnet18(weights=None).state_dict()
    del state["layer4.1.conv2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial.pt: 1 backbone key\(s\) are missing \(e.g. layer4.1.conv2.weight"):
        build_model("resnet18", str(path))

    path = tmp_path / "reshaped.pt"
    state = models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(8, 64, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"reshaped.pt: tensor shapes do not fit.*layer1.0.conv1.weight \(8, 64, 3, 3\)"):
        build_model("resnet18", str(path))


def test_offline_with_an_empty_cache_says_how_to_get_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append(url)
        raise URLError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_model("resnet18", "imagenet")
    message = str(caught.value)
    assert attempts == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "network unreachable" in message and "'none'" in message
    assert isinstance(caught.value, RuntimeError)  # the CLI reports it as an error, not a traceback


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_clean_state_dict_strips_wrapper_prefixes_in_any_order(prefix):
    # torch.compile(DDP(model)).state_dict() names a key "_orig_mod.module.x"; DDP(compile(model)) "module._orig_mod.x".
    from faceattr.model import clean_state_dict

    weight, bias = torch.ones(2, 3), torch.zeros(2)
    cleaned = clean_state_dict({f"{prefix}fc.weight": weight, f"{prefix}fc.bias": bias}, "test")
    assert cleaned.keys() == {"fc.weight", "fc.bias"} and cleaned["fc.weight"] is weight


def test_a_compiled_ddp_state_dict_loads_into_the_plain_model(tmp_path):
    from faceattr.model import build_model, clean_state_dict

    source = build_model("resnet18", weights="none", freeze_children=0)
    nested = {f"_orig_mod.module.{k}": v for k, v in source.state_dict().items()}
    target = build_model("resnet18", weights="none", freeze_children=0)
    target.load_state_dict(clean_state_dict(nested, tmp_path))  # strict: every key must match
    assert torch.equal(target.fc.weight, source.fc.weight)
