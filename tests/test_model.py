import pickle

import pytest
import torch

from mlns_fast.config import ModelConfig
from mlns_fast.errors import ModelError
from mlns_fast.model import create_backbone, create_model, load_backbone_weights, read_state_dict


@pytest.mark.parametrize("arch", ["mlns_cnn", "convnet4", "resnet18"])
@pytest.mark.parametrize("head, shape", [("sum", (3, 37)), ("digits", (3, 4, 10))])
def test_output_shapes(arch, head, shape):
    m = create_model(ModelConfig(arch=arch, head=head)).eval()
    out = m(torch.rand(3, 1, 40, 168))
    assert out.shape == shape and torch.isfinite(out).all()


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ModelError, match="unknown architecture 'resnet5'.*resnet50"):
        create_backbone("resnet5")
    with pytest.raises(ModelError, match="mlns_cnn"):
        create_backbone("mlns_cn")


def test_rgb_imagenet_style_weights_adapt_to_one_channel(tmp_path):
    import timm
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "r18.pth")
    bb = create_backbone("resnet18")
    load_backbone_weights(bb, tmp_path / "r18.pth")
    expect = rgb.state_dict()["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(bb.conv1.weight, expect)
    torch.testing.assert_close(bb.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    m = create_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "r18.safetensors")))
    torch.testing.assert_close(m.backbone.conv1.weight, expect)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(create_backbone("convnet4").state_dict(), tmp_path / "c4.pt")
    with pytest.raises(ModelError, match="do not match"):
        create_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "c4.pt")))


def test_hub_names_are_never_downloaded():
    with pytest.raises(ModelError, match="nothing is downloaded"):
        create_model(ModelConfig(arch="resnet18", weights="timm/resnet18.a1_in1k"))
    with pytest.raises(ModelError, match="not found"):
        create_model(ModelConfig(arch="resnet18", weights="/no/such/file.pth"))


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": Boom()}, f)
    with pytest.raises(ModelError, match="not a loadable weights file"):
        read_state_dict(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out
