import pickle

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.errors import ConfigError, ModelError
from mlns_fast.model import count_params, create_backbone, create_model, load_backbone_weights, read_state_dict


@pytest.mark.parametrize("arch", ["mlns_cnn", "mlns_cnn_wide", "mlns_cnn_lean", "convnet4", "resnet18"])
@pytest.mark.parametrize("head, shape", [("sum", (3, 37)), ("digits", (3, 4, 10))])
def test_output_shapes(arch, head, shape):
    m = create_model(ModelConfig(arch=arch, head=head), IMAGE_SIZE).eval()
    out = m(torch.rand(3, 1, 40, 168))
    assert out.shape == shape and torch.isfinite(out).all()


def test_wide_cnn_is_the_default_cnn_with_half_again_the_channels():
    """mlns_cnn_wide: the same six convs and 5 x 21 grid, 48 / 96 / 192 channels (about 2.2x the weights)."""
    x = torch.rand(2, 1, 40, 168)
    base, wide = (create_model(ModelConfig(arch=a), IMAGE_SIZE).eval() for a in ("mlns_cnn", "mlns_cnn_wide"))
    assert base.features(x).shape == (2, 128, 5, 21) and wide.features(x).shape == (2, 192, 5, 21)
    convs = [m.out_channels for m in wide.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [48, 48, 96, 96, 192, 192]
    assert 2.0 < count_params(wide.backbone) / count_params(base.backbone) < 2.4


def test_lean_cnn_is_the_default_cnn_with_a_narrower_first_stage():
    """mlns_cnn_lean: the same six convs and 5 x 21 grid; only the two convs at 20 x 84 have 16 channels, not 32."""
    x = torch.rand(2, 1, 40, 168)
    base, lean = (create_model(ModelConfig(arch=a), IMAGE_SIZE).eval() for a in ("mlns_cnn", "mlns_cnn_lean"))
    assert lean.features(x).shape == base.features(x).shape == (2, 128, 5, 21)
    convs = [(m.out_channels, m.stride) for m in lean.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(16, (2, 2)), (16, (1, 1)), (64, (2, 2)), (64, (1, 1)), (128, (2, 2)), (128, (1, 1))]
    # only the first stage and the conv that reads it differ in shape; every later weight is the default's
    sizes = {n: p.shape for n, p in base.backbone.named_parameters()}
    lean_sizes = {n: p.shape for n, p in lean.backbone.named_parameters()}
    assert lean_sizes.keys() == sizes.keys()
    first = ("features.0.", "features.1.", "features.2.0")
    assert [n for n in sizes if sizes[n] != lean_sizes[n]] == [n for n in sizes if n.startswith(first)]
    with pytest.raises(RuntimeError, match="size mismatch"):  # a default run's weights are not the lean CNN's
        lean.load_state_dict(base.state_dict())


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
    m = create_model(ModelConfig(arch="resnet18", backbone_weights=str(tmp_path / "r18.safetensors")), IMAGE_SIZE)
    torch.testing.assert_close(m.backbone.conv1.weight, expect)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(create_backbone("convnet4").state_dict(), tmp_path / "c4.pt")
    with pytest.raises(ModelError, match="do not match"):
        create_model(ModelConfig(arch="resnet18", backbone_weights=str(tmp_path / "c4.pt")), IMAGE_SIZE)


def test_hub_names_are_never_downloaded():
    with pytest.raises(ModelError, match="nothing is downloaded"):
        create_model(ModelConfig(arch="resnet18", backbone_weights="timm/resnet18.a1_in1k"), IMAGE_SIZE)
    with pytest.raises(ModelError, match="not found"):
        create_model(ModelConfig(arch="resnet18", backbone_weights="/no/such/file.pth"), IMAGE_SIZE)


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"conv1.weight": Boom()}, f)
    with pytest.raises(ModelError, match="not a loadable weights file"):
        read_state_dict(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_pretrained_goes_through_timm_and_adapts_the_stem(tmp_path):
    """`--pretrained` is timm's own loading path; here pointed at a local file (no network)."""
    import timm
    rgb = timm.create_model("resnet10t", pretrained=False)  # ImageNet-shaped: RGB stem, 1000-way fc
    torch.save(rgb.state_dict(), tmp_path / "r10t.pth")
    bb = create_backbone("resnet10t", pretrained=True, pretrained_file=tmp_path / "r10t.pth")
    stem = rgb.conv1[0].weight
    assert bb.conv1[0].weight.shape == (stem.shape[0], 1, 3, 3)
    torch.testing.assert_close(bb.conv1[0].weight, stem.sum(1, keepdim=True))  # timm's adapt_input_conv rule
    assert torch.equal(bb.layer4[0].conv2.weight, rgb.layer4[0].conv2.weight)
    fresh = create_backbone("resnet10t")
    assert not torch.equal(fresh.layer4[0].conv2.weight, rgb.layer4[0].conv2.weight)


@pytest.mark.parametrize("arch, msg", [("resnet10t.bogus_tag", "Invalid pretrained tag"),
                                       ("mlns_cnn", "is built in: it has no pretrained weights")])
def test_pretrained_user_errors(arch, msg):
    with pytest.raises(ModelError, match=msg):
        create_backbone(arch, pretrained=True)


def test_pretrained_offline_is_one_line_naming_the_offline_route(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "-m", "mlns_fast", "train", "--arch", "resnet10t", "--pretrained",
                        "--runs-dir", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--backbone-weights FILE" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


def test_one_source_of_first_weights():
    from mlns_fast.errors import ConfigError
    with pytest.raises(ConfigError, match="one of --pretrained, --backbone-weights, --init"):
        ModelConfig(arch="resnet18", pretrained=True, backbone_weights="w.pth")


def test_init_takes_the_backbone_and_the_head_where_it_fits(tmp_path):
    from safetensors.torch import save_file
    from mlns_fast.model import load_init_weights
    src = create_model(ModelConfig(arch="convnet4", head="digits"), IMAGE_SIZE)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = create_model(ModelConfig(arch="convnet4", head="sum", init=str(tmp_path / "w.safetensors")), IMAGE_SIZE)
    for k, v in dst.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, src.state_dict()[k]), k
    same_head = create_model(ModelConfig(arch="convnet4", head="digits", init=str(tmp_path / "w.safetensors")), IMAGE_SIZE)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in same_head.state_dict().items())
    with pytest.raises(ModelError, match="needs the same --arch"):
        load_init_weights(create_model(ModelConfig(arch="mlns_cnn"), IMAGE_SIZE), tmp_path / "w.safetensors")


def test_feature_maps_suit_the_reader():
    """Stride-32 CNNs would hand the reader 2 x 6 cells; token models need a grid, not a token list."""
    vit = create_model(ModelConfig(arch="vit_tiny_patch16_224"), IMAGE_SIZE).eval()
    assert vit.tokens and vit.features(torch.rand(2, 1, 40, 168)).shape == (2, 192, 3, 11)
    assert vit(torch.rand(2, 1, 40, 168)).shape == (2, 4, 10)
    r18 = create_model(ModelConfig(arch="resnet18"), IMAGE_SIZE).eval()
    assert r18.features(torch.rand(2, 1, 40, 168)).shape[-2:] == (3, 11)  # auto: output stride 16
    r18_32 = create_model(ModelConfig(arch="resnet18", output_stride=32), IMAGE_SIZE).eval()
    assert r18_32.features(torch.rand(2, 1, 40, 168)).shape[-2:] == (2, 6)
    mnv3 = create_model(ModelConfig(arch="mobilenetv3_small_100"), IMAGE_SIZE).eval()  # no output_stride: its own
    assert mnv3.features(torch.rand(2, 1, 40, 168)).shape[-2:] == (2, 6)


@pytest.mark.parametrize("arch, stride, msg", [("mobilenetv3_small_100", 16, "does not take --output-stride"),
                                               ("vit_tiny_patch16_224", 16, "token model"),
                                               ("mlns_cnn", 8, "built in")])
def test_output_stride_errors(arch, stride, msg):
    with pytest.raises(ModelError, match=msg):
        create_model(ModelConfig(arch=arch, output_stride=stride), IMAGE_SIZE)


def test_pruned_stages_are_gone_and_the_head_reads_the_stage_before(tmp_path):
    """--prune-stages N: timm's prune_intermediate_layers removes the last N stages; resnet18 then reads
    layer3 (256 channels, 3 x 11 at stride 16 without dilation) or layer2 (128, 5 x 21). Weights of the
    whole backbone still load (they are read before the pruning), into the stages that are left."""
    import timm
    x = torch.rand(2, 1, 40, 168)
    full = create_model(ModelConfig(arch="resnet18"), IMAGE_SIZE).eval()
    one = create_model(ModelConfig(arch="resnet18", prune_stages=1), IMAGE_SIZE).eval()
    two = create_model(ModelConfig(arch="resnet18", prune_stages=2), IMAGE_SIZE).eval()
    assert full.features(x).shape == (2, 512, 3, 11)
    assert one.features(x).shape == (2, 256, 3, 11) and one.grid == "3x11" and one(x).shape == (2, 4, 10)
    assert two.features(x).shape == (2, 128, 5, 21) and two.grid == "5x21" and two(x).shape == (2, 4, 10)
    assert not any(k.startswith("layer4") for k in one.backbone.state_dict())
    assert not any(k.startswith(("layer3", "layer4")) for k in two.backbone.state_dict())
    assert sum(p.numel() for p in one.backbone.parameters()) < 0.25 * sum(p.numel() for p in full.backbone.parameters())
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "r18.pth")
    loaded = create_model(ModelConfig(arch="resnet18", prune_stages=1, backbone_weights=str(tmp_path / "r18.pth")),
                          IMAGE_SIZE)
    torch.testing.assert_close(loaded.backbone.layer3[1].conv2.weight, rgb.layer3[1].conv2.weight)


def test_pruned_resnet50_reads_layer3_on_the_same_grid():
    """The README's resnet50 CPU recipe (--prune-stages 1): a bottleneck network loses its dilated layer4
    and reads layer3 (1,024 channels) on the same 3 x 11 grid, with 8.5 M of its 23.5 M backbone
    parameters left."""
    x = torch.rand(2, 1, 40, 168)
    full = create_model(ModelConfig(arch="resnet50"), IMAGE_SIZE).eval()
    one = create_model(ModelConfig(arch="resnet50", prune_stages=1), IMAGE_SIZE).eval()
    assert full.features(x).shape == (2, 2048, 3, 11)
    assert one.features(x).shape == (2, 1024, 3, 11) and one.grid == "3x11" and one(x).shape == (2, 4, 10)
    assert not any(k.startswith("layer4") for k in one.backbone.state_dict())
    n_full, n_one = (sum(p.numel() for p in m.backbone.parameters()) for m in (full, one))
    assert 0.3 < n_one / n_full < 0.4


@pytest.mark.parametrize("arch, n, msg", [("mlns_cnn", 1, "no stages to remove"),
                                          ("resnet18", 4, "--prune-stages must be in")])
def test_prune_stages_errors(arch, n, msg):
    with pytest.raises((ModelError, ConfigError), match=msg):
        create_model(ModelConfig(arch=arch, prune_stages=n), IMAGE_SIZE)


def test_stacked_columns_keep_each_rows_features():
    """--columns stack: the reader's GRU takes a column's rows side by side (C x h inputs), so two
    inks in different rows of one column no longer average into one; mean is the default."""
    mean = create_model(ModelConfig(), IMAGE_SIZE).eval()
    stack = create_model(ModelConfig(columns="stack"), IMAGE_SIZE).eval()
    c = mean.backbone.num_features
    assert mean.head.rnn.input_size == c and stack.head.rnn.input_size == c * 5  # the CNN's 5 x 21 map
    x = torch.rand(3, 1, 40, 168)
    assert stack(x).shape == (3, 4, 10)
    # swapping two rows of the feature map changes what the stacked reader reads, not the mean reader
    f = torch.rand(3, c, 5, 21)  # a feature map with rows that differ
    swapped = f[:, :, [1, 0, 2, 3, 4]]
    assert torch.allclose(mean.head(f), mean.head(swapped), atol=1e-6)
    assert (stack.head(f) - stack.head(swapped)).abs().max() > 1e-3


def test_query_reader_attends_over_every_cell(tmp_path):
    """--reader queries: four learned queries over the 5 x 21 cells. Unlike the column reader, it
    tells apart two feature maps whose columns have the same mean (ink in other rows of a column);
    a slot's attention is a distribution over all cells; the ONNX graph computes what torch does."""
    import onnxruntime as ort
    gru = create_model(ModelConfig(), IMAGE_SIZE).eval()
    q = create_model(ModelConfig(reader="queries"), IMAGE_SIZE).eval()
    c = q.backbone.num_features
    assert q.head.row.shape[0] == 5 and q.head.rnn.input_size == c
    f = torch.rand(3, c, 5, 21)
    swapped = f[:, :, [1, 0, 2, 3, 4]]  # the same column means, other rows
    with torch.no_grad():
        q.head.queries.mul_(30)  # sharp attention, as after training (at its init it is near uniform)
        assert torch.allclose(gru.head(f), gru.head(swapped), atol=1e-6)
        assert (q.head(f) - q.head(swapped)).abs().max() > 1e-3
        # each slot's read is a convex mix of the cells' values: moving one cell's features moves it
        g = f.clone()
        g[:, :, 4, 20] += 5.0
        assert (q.head(f) - q.head(g)).abs().max() > 1e-4
    x = torch.rand(2, 1, 40, 168)
    with torch.no_grad():
        want = q(x).numpy()
    assert want.shape == (2, 4, 10)
    torch.onnx.export(q, (x,), str(tmp_path / "q.onnx"), input_names=["image"], output_names=["out"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-3
    with pytest.raises(Exception, match="reader"):
        ModelConfig(reader="transformer")


def test_pyramid_reads_a_finer_map():
    """--pyramid: the last stage upsampled onto the stage before it (FPN's top-down merge), so the
    reader gets 10 x 42 cells from mlns_cnn instead of 5 x 21; the fine level reaches the output."""
    m = create_model(ModelConfig(pyramid=True), IMAGE_SIZE).eval()
    assert m.grid == "10x42" and m.head.rnn.input_size == m.backbone.num_features
    x = torch.rand(2, 1, 40, 168)
    assert m(x).shape == (2, 4, 10)
    fine, coarse = m.backbone.forward_pyramid(x)
    assert fine.shape[-2:] == (10, 42) and coarse.shape[-2:] == (5, 21)
    torch.nn.init.zeros_(m.lateral.weight)
    torch.nn.init.zeros_(m.lateral.bias)  # without the fine level the map is the coarse one, upsampled
    assert torch.equal(m.features(x)[:, :, ::2, ::2], coarse)
    assert create_model(ModelConfig(arch="convnet4", pyramid=True), IMAGE_SIZE).grid == "5x21"


def test_pyramid_for_timm_merges_the_stride_8_stage():
    """A timm CNN's pyramid: its last stage (3 x 11 at output stride 16) upsampled onto the last finer
    stage, through timm's forward_intermediates: resnet18 reads 5 x 21 cells; token models are refused."""
    m = create_model(ModelConfig(arch="resnet18", pyramid=True), IMAGE_SIZE).eval()
    assert m.grid == "5x21" and m.levels == [2, 4] and m.head.rnn.input_size == 512
    assert create_model(ModelConfig(arch="resnet18"), IMAGE_SIZE).grid == "3x11"
    x = torch.rand(2, 1, 40, 168)
    assert m(x).shape == (2, 4, 10)
    fine, coarse = m.pyramid(x)
    assert fine.shape[1:] == (128, 5, 21) and torch.allclose(coarse, m.backbone.forward_features(x), atol=1e-5)
    m.lateral.weight.grad = None
    m(x).sum().backward()
    assert m.lateral.weight.grad.abs().sum() > 0  # the stride-8 stage reaches the output
    with pytest.raises(ModelError, match="--pyramid: .*no finer stage"):
        create_model(ModelConfig(arch="vit_tiny_patch16_224", pyramid=True), IMAGE_SIZE)


def _ink_box(img: torch.Tensor, t: float = 0.5) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(img > t, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_ink_fit_enlarges_small_ink_to_fill_the_canvas():
    """--zoom: a small row of ink is scaled up (bounded by zoom and by the stretch limit) and centred;
    an image whose ink already fills the canvas, and a blank one, pass through unchanged."""
    from mlns_fast.model import InkFit
    fit = InkFit(3.0, (40, 168))
    x = torch.zeros(3, 1, 40, 168)
    x[0, 0, 5:17, 10:50] = 1.0  # 12 x 40 px of ink in the top-left corner
    x[1, 0, :, :] = torch.rand(40, 168)  # ink everywhere
    y = fit(x)
    x0, y0, x1, y1 = _ink_box(y[0, 0])
    assert 24 <= y1 - y0 <= 36 and 110 <= x1 - x0 <= 122  # height: 40 / (12 + smoothing + margins) ~ 2.2x; width 3x
    assert abs((x0 + x1) / 2 - 84) <= 2 and abs((y0 + y1) / 2 - 20) <= 2  # centred
    assert torch.allclose(y[1], x[1], atol=1e-5) and torch.equal(y[2], x[2])
    wide = torch.zeros(1, 1, 40, 168)
    wide[0, 0, 16:24, 20:60] = 1.0  # 8 x 40: height could take 3x, width only 168/44: capped by the stretch limit
    bx0, by0, bx1, by1 = _ink_box(fit(wide)[0, 0])
    assert (by1 - by0) / 8 <= 3.05 and (bx1 - bx0) / 40 <= 3.05


def test_ink_fit_ignores_isolated_noise_and_faint_ink_is_found():
    from mlns_fast.model import InkFit
    fit = InkFit(2.0, (40, 168))
    x = torch.zeros(2, 1, 40, 168)
    x[:, 0, 14:26, 70:100] = torch.tensor([1.0, 0.3])[:, None, None]  # bright and faint ink
    x[:, 0, 0, 0] = x[:, 0, 39, 167] = 0.9  # two hot pixels in the corners (noise)
    y = fit(x)
    for i in range(2):
        bx0, by0, bx1, by1 = _ink_box(y[i, 0], 0.15)
        assert by1 - by0 >= 20 and bx1 - bx0 >= 50  # enlarged about 2x: the corners did not count as ink


def test_ink_fit_keeps_a_thin_faint_stroke_beside_thick_ink_inside_its_window():
    """A one-pixel stroke averages to a third of its value: at the default threshold (0.3 of the brightest
    averaged value, a thick digit's) an outer digit's thin end falls outside the fitted window; at 0.15
    (`[model] ink_rel`) it stays in."""
    from mlns_fast.model import InkFit
    x = torch.zeros(1, 1, 40, 168)
    x[0, 0, 12:28, 60:76] = 1.0  # a thick digit
    x[0, 0, 12:28, 110] = 0.6  # a thin, faint stroke to its right: averaged 0.2
    old, new, lines = InkFit(3.0, (40, 168)), InkFit(3.0, (40, 168), rel=0.15), InkFit(3.0, (40, 168), kind="lines")
    assert old.rel == 0.3 == ModelConfig().ink_rel and old.kind == "box"
    for fit, kept in ((new, True), (old, False), (lines, True)):  # on line averages the stroke keeps its 0.6
        cx, _, zx, _ = fit.transform(x)
        x0, x1 = ((cx - 1 / zx + 1) * 84).item(), ((cx + 1 / zx + 1) * 84).item()  # the window, in pixels
        assert x0 <= 60 and (x1 > 111) == kept  # the thick digit inside either way; the stroke at 0.15 or on lines
        y = fit(x)[0, 0]
        last = (y.amax(0) > 0.1).nonzero().max().item()  # the output's rightmost inked column
        assert y.max() > 0.9 and (last > 150 if kept else last < 120)  # the stroke near the right edge, or gone
    assert create_model(ModelConfig(ink_rel=0.15), (40, 168)).fit.rel == 0.15  # the config reaches the network
    assert create_model(ModelConfig(ink_map="lines"), (40, 168)).fit.kind == "lines"


def test_the_default_fit_finds_the_ink_on_the_3x3_average_in_training_and_on_line_averages_when_reading():
    """`[model] ink_map` lines, `ink_map_train` box (the defaults): a training batch's thin, faint end is cut
    off as it always was; validation, evaluate and predict keep it inside the window."""
    from mlns_fast.model import InkFit
    x = torch.zeros(1, 1, 40, 168)
    x[0, 0, 12:28, 60:76] = 1.0
    x[0, 0, 12:28, 110] = 0.6  # averaged 0.2 over 3x3: below 0.3 of the thick digit's 1.0; 0.6 on line averages
    fit = create_model(ModelConfig(), (40, 168)).fit
    assert (fit.kind, fit.train_kind) == ("lines", "box")

    def right_edge(f):  # the fitted window's right end, in input pixels
        cx, _, zx, _ = f.transform(x)
        return ((cx + 1 / zx + 1) * 84).item()
    assert right_edge(fit.train()) < 100 and right_edge(fit.eval()) > 111
    same = create_model(ModelConfig(ink_map_train="same"), (40, 168)).fit  # trained as it reads: lines both ways
    assert same.train_kind == "lines" and right_edge(same.train()) > 111
    old = create_model(ModelConfig(ink_map="box"), (40, 168)).fit  # the map before the thirtieth round, both ways
    assert (old.kind, old.train_kind) == ("box", "box") and right_edge(old.train()) < 100 and right_edge(old.eval()) < 100
    with pytest.raises(ConfigError, match="--ink-map-train must be one of same, box, lines"):
        ModelConfig(ink_map_train="disc")
    with pytest.raises(ConfigError, match="--ink-map must be one of box, lines"):
        ModelConfig(ink_map="disc")
    with pytest.raises(ValueError, match="one of"):
        InkFit(3.0, (40, 168), kind="disc")


def test_line_map_keeps_a_one_pixel_stroke_in_four_directions_and_dims_a_lone_pixel():
    from mlns_fast.model import InkFit
    x = torch.zeros(5, 1, 9, 9)
    x[0, 0, :, 4] = 1  # |
    x[1, 0, 4, :] = 1  # -
    x[2, 0] = torch.eye(9)  # \
    x[3, 0] = torch.eye(9).flip(1)  # /
    x[4, 0, 4, 4] = 1  # a lone pixel (noise)
    fit = InkFit(3.0, (9, 9))
    lines, box = fit.line_map(x), InkFit.box_map(x)
    assert lines.shape == x.shape
    assert torch.allclose(lines[:4, 0, 4, 4], torch.ones(4)) and torch.allclose(box[:4, 0, 4, 4], torch.full((4,), 1 / 3))
    assert lines[4, 0, 4, 4] == pytest.approx(1 / 3) and box[4, 0, 4, 4] == pytest.approx(1 / 9)
    blank = torch.ones(1, 1, 9, 9)  # flat ink (a soft edge's inside): the same value either way
    assert torch.allclose(fit.line_map(blank)[..., 1:-1, 1:-1], InkFit.box_map(blank)[..., 1:-1, 1:-1])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_line_map_is_the_four_line_kernels_zero_padded(layout):
    """The line map is written as shifted slices (fast on one channel); it is what a conv2d with the four
    3-pixel line kernels and a max give, borders included, on either memory layout."""
    from mlns_fast.model import InkFit
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 40, 168, generator=g) * (torch.rand(6, 1, 40, 168, generator=g) > 0.7))
    x = x.contiguous(memory_format=layout)
    kernels = torch.zeros(4, 1, 3, 3)
    kernels[0, 0, :, 1] = kernels[1, 0, 1, :] = 1 / 3
    kernels[2, 0], kernels[3, 0] = torch.eye(3) / 3, torch.eye(3).flip(1) / 3
    lines = InkFit.line_map(x)
    assert lines.shape == x.shape and lines.dtype == x.dtype
    assert torch.allclose(lines, F.conv2d(x, kernels, padding=1).amax(1, keepdim=True), atol=1e-6)


def test_ink_jitter_draws_each_training_images_threshold_and_reading_keeps_ink_rel():
    """`[model] ink_jitter`: in training each image's threshold is drawn from [ink_rel, ink_rel + jitter], so
    the same image's thin end is sometimes kept and sometimes cut; in eval the threshold is ink_rel, always."""
    from mlns_fast.model import InkFit
    x = torch.zeros(64, 1, 40, 168)
    x[:, 0, 12:28, 60:76] = 1.0
    x[:, 0, 12:28, 110] = 0.6  # averaged 0.2: kept below a threshold of 0.2, cut above it
    fit = InkFit(3.0, (40, 168), rel=0.15, jitter=0.3)
    torch.manual_seed(0)
    kept = fit.train().transform(x)[0] > 0  # the window's centre moves right when the stroke is kept
    assert 0.05 * 64 < kept.sum() < 0.4 * 64  # P(threshold < 0.2) = 0.05 / 0.3: some kept, most cut
    cx = fit.eval().transform(x)[0]
    assert (cx > 0).all() and torch.equal(cx, InkFit(3.0, (40, 168), rel=0.15).transform(x)[0])  # kept, every time
    net = create_model(ModelConfig(ink_rel=0.15, ink_jitter=0.3), (40, 168))
    assert (net.fit.rel, net.fit.jitter) == (0.15, 0.3)
    with pytest.raises(ConfigError, match="at most 0.9"):
        ModelConfig(ink_rel=0.5, ink_jitter=0.5)
    with pytest.raises(ConfigError, match="need --zoom above 1"):  # no ink fit: the option would do nothing
        ModelConfig(zoom=1.0, ink_jitter=0.3)
    assert create_model(ModelConfig(zoom=1.0), (40, 168)).fit is None  # at the defaults, zoom 1 stays allowed


@pytest.mark.parametrize("ink_map", ["box", "lines"])
def test_zoom_is_part_of_the_network_and_exports(tmp_path, ink_map):
    """--zoom lives in the model: the same network with and without it differs only by the enlargement,
    and the ONNX graph computes what torch does, with either ink map."""
    import onnxruntime as ort
    m = create_model(ModelConfig(zoom=2.5, ink_map=ink_map), IMAGE_SIZE).eval()
    x = torch.zeros(2, 1, 40, 168)
    x[0, 0, 15:25, 60:100] = 1.0
    x[1, 0, 5:35, 10:150] = torch.rand(30, 140)
    with torch.no_grad():
        want = m(x).numpy()
        assert not torch.allclose(m(x), m.head(m.features(x)))  # the small row was enlarged first
    torch.onnx.export(m, (x,), str(tmp_path / "m.onnx"), input_names=["image"], output_names=["out"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-3
