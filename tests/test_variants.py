"""Surgery does what it says: each what-if checked against the computation it claims to be."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from gradscope.blocks import block_containers, find_blocks
from gradscope.errors import UsageError
from gradscope.variants import (
    Depth,
    ShallowUnavailable,
    Skipped,
    Variant,
    VariantPlan,
    build_variants,
    check_applicable,
    describe_architecture,
    make_shallow,
    output_probe,
    reinit,
    remove_norms,
    remove_residuals,
    replace_activations,
)


def tiny_bert(layers=2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertModel(config).eval()


def test_sigmoid_really_replaces_every_gelu_in_bert():
    model = tiny_bert()
    gelus = describe_architecture(model)["relu_family_activations"]
    assert gelus == 2  # one per layer (BertIntermediate)
    assert replace_activations(model, "sigmoid") == gelus
    arch = describe_architecture(model)
    assert arch["relu_family_activations"] == 0
    assert arch["activations"] == {"Sigmoid": gelus, "Tanh": 1}  # the pooler's tanh was not ReLU-family
    # The intermediate layer now computes sigmoid(dense(h)).
    inter = model.encoder.layer[0].intermediate
    h = torch.randn(3, 16)
    torch.testing.assert_close(inter(h), torch.sigmoid(inter.dense(h)))


def test_tanh_replaces_torchvision_relus():
    model = torchvision.models.resnet18(weights=None)
    assert replace_activations(model, "tanh") > 0
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    x = torch.randn(1, 64, 8, 8)
    block = model.layer1[0].eval()
    expected = torch.tanh(block.bn2(block.conv2(torch.tanh(block.bn1(block.conv1(x))))) + x)
    torch.testing.assert_close(block(x), expected)


def test_no_residual_removes_the_skip_from_torchvision_basic_and_bottleneck_blocks():
    for arch in ("resnet18", "resnet50"):
        model = torchvision.models.get_model(arch, weights=None).eval()
        block = model.layer1[0]
        x = torch.randn(1, 64, 8, 8)
        with_skip = block(x)
        assert remove_residuals(model) == sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
        if arch == "resnet18":
            expected = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        else:
            out = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
            expected = block.relu(block.bn3(block.conv3(out)))
        torch.testing.assert_close(block(x), expected)
        assert not torch.allclose(block(x), with_skip)
        assert type(block).__name__.startswith("NoResidual") and describe_architecture(model)["residual_modules"] == 0


def test_no_residual_removes_bert_sublayer_skips():
    model = tiny_bert()
    assert remove_residuals(model) == 4  # attention output and feed-forward output, per layer
    out = model.encoder.layer[0].output
    h, skip = torch.randn(2, 32), torch.randn(2, 16)
    torch.testing.assert_close(out(h, skip), out.LayerNorm(out.dense(h)))


def test_no_norm_replaces_every_normalization_layer_by_identity():
    model = torchvision.models.resnet18(weights=None)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert remove_norms(model) == batchnorms == 20
    assert describe_architecture(model)["norm_layers"] == 0
    bert = tiny_bert()
    assert remove_norms(bert) == 1 + 2 * 2  # embeddings + two per layer
    assert not any(isinstance(m, nn.LayerNorm) for m in bert.modules())


def test_reinit_he_and_xavier_draw_the_documented_variances():
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])
    assert reinit(model, "he", seed=0) == 4
    weights = torch.cat([m.weight.flatten() for m in model])
    assert weights.var().item() == pytest.approx(2 / 512, rel=0.02)  # He: 2 / fan_in
    assert all(torch.count_nonzero(m.bias) == 0 for m in model)
    reinit(model, "xavier", seed=0)
    weights = torch.cat([m.weight.flatten() for m in model])
    assert weights.var().item() == pytest.approx(2 / (512 + 512), rel=0.02)  # Xavier: 2 / (fan_in + fan_out)


def test_shallow_keeps_the_first_half_of_each_stack_with_pretrained_weights():
    model = torchvision.models.resnet50(weights=None)
    shallow, changes = make_shallow(model)
    assert changes["blocks_kept"] == {"layer1": [2, 3], "layer2": [2, 4], "layer3": [3, 6], "layer4": [2, 3]}
    assert torch.equal(shallow.layer3[2].conv1.weight, model.layer3[2].conv1.weight)
    assert shallow.layer3[2].conv1.weight is not model.layer3[2].conv1.weight  # a copy
    assert len(model.layer3) == 6  # the original is untouched
    assert shallow.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_shallow_hf_model_keeps_its_config_in_step():
    model = tiny_bert(layers=4)
    shallow, _ = make_shallow(model)
    assert len(shallow.encoder.layer) == 2 and shallow.config.num_hidden_layers == 2
    assert model.config.num_hidden_layers == 4


def test_what_if_with_nothing_to_change_is_refused_before_running():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2))
    with pytest.raises(UsageError, match="what-if no-norm: the model has no normalization layers"):
        check_applicable(model, ("no-norm",))
    with pytest.raises(UsageError, match="what-if tanh: found no ReLU-family activation"):
        check_applicable(model, ("tanh",))
    with pytest.raises(UsageError, match="what-if no-residual"):
        check_applicable(model, ("no-residual",))


def test_variants_share_one_depth_axis():
    model = torchvision.models.resnet18(weights=None)
    variants = {v.name: v for v in build_variants(model, lambda: torchvision.models.resnet18(weights=None),
                                                  VariantPlan(("pretrained", "scratch", "shallow"), ("no-norm",)))}
    assert variants["pretrained"].blocks == find_blocks(model)
    assert variants["scratch"].blocks == variants["no-norm"].blocks == find_blocks(model)
    assert variants["shallow"].blocks == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


# --- the block rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, count, first, last",
    [
        ("resnet18", 8, "layer1.0", "layer4.1"),
        ("vit_b_16", 12, "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_11"),
        ("convnext_tiny", 22, "features.0", "features.7.2"),  # the classifier's LayerNorm and Linear are a head
        ("mobilenet_v3_small", 13, "features.0", "features.12"),  # features.2 is a block, not its 3 conv layers
        ("densenet121", 58, "features.denseblock1.denselayer1", "features.denseblock4.denselayer16"),
        ("vgg11_bn", 11, "features.0", "classifier.6"),  # 8 convolutions and 3 Linear layers; no batch norm
    ],
)
def test_blocks_are_found_from_the_model_itself(arch, count, first, last):
    blocks = find_blocks(torchvision.models.get_model(arch, weights=None))
    assert (len(blocks), blocks[0], blocks[-1]) == (count, first, last)


@pytest.mark.slow
def test_the_normalization_layers_of_a_plain_stack_are_not_blocks():
    """VGG-BN's batch norms only rescale the convolution before them: blocks alternating conv, norm would zigzag."""
    vgg = torchvision.models.vgg11_bn()
    assert find_blocks(vgg) == [n for n, m in vgg.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    without = torchvision.models.vgg11_bn()
    remove_norms(without)  # the same depth axis with the norms and without them (the no-norm what-if)
    assert find_blocks(vgg) == find_blocks(without)
    mlp = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU())])
    assert find_blocks(mlp) == ["0", "3", "6", "9"] and block_containers(mlp) == [""]  # homogeneous: norms aside
    shallow, changes = make_shallow(nn.ModuleDict({"mlp": mlp}))
    assert changes["blocks_kept"] == {"mlp": [6, 12]} and find_blocks(shallow) == ["mlp.0", "mlp.3"]


def test_wrapping_a_layer_or_a_block_inside_the_model_changes_no_block():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    def plain():
        model = nn.Module()
        model.features = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        model.classifier = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        return model

    expected = find_blocks(plain())
    wrapped = plain()  # a wrapped Linear is still one layer, not a block that would make its stack one of blocks
    wrapped.classifier[2] = checkpoint_wrapper(wrapped.classifier[2])
    wrapped.features[0] = torch.compile(wrapped.features[0], backend="eager")
    assert find_blocks(wrapped) == expected
    resnet = torchvision.models.resnet18()
    expected = (find_blocks(resnet), block_containers(resnet))
    for i in range(2):
        resnet.layer2[i] = checkpoint_wrapper(resnet.layer2[i])
    resnet.fc = torch.compile(resnet.fc, backend="eager")
    assert (find_blocks(resnet), block_containers(resnet)) == expected


def test_stages_of_a_hf_resnet_split_into_layers_but_t5_sublayers_do_not():
    from transformers import ResNetConfig, ResNetModel, T5Config, T5Model

    resnet = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], layer_type="basic"))
    assert find_blocks(resnet) == [f"encoder.stages.{s}.layers.{i}" for s in range(2) for i in range(2)]
    assert block_containers(resnet) == ["encoder.stages.0.layers", "encoder.stages.1.layers"]
    t5 = T5Model(T5Config(d_model=16, d_ff=16, num_layers=2, num_heads=2, d_kv=8, vocab_size=50))
    assert find_blocks(t5) == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]


def _decoder(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
        model = transformers.GPT2LMHeadModel(config)
        layers, attn, norm2, mlp = model.transformer.h, "attn", "ln_2", "mlp"
    elif kind == "llama":
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                          num_key_value_heads=2, vocab_size=64, max_position_embeddings=32)
        model = transformers.LlamaForCausalLM(config)
        layers, attn, norm2, mlp = model.model.layers, "self_attn", "post_attention_layernorm", "mlp"
    else:
        config = transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                            vocab_size=64, max_position_embeddings=32,
                                            use_parallel_residual=(kind == "neox-parallel"))
        model = transformers.GPTNeoXForCausalLM(config)
        layers, attn, norm2, mlp = model.gpt_neox.layers, "attention", "post_attention_layernorm", "mlp"
    return model.eval(), layers, attn, norm2, mlp


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox-sequential"])
def test_no_residual_cancels_the_inline_adds_of_pre_norm_decoder_blocks(kind):
    model, layers, attn, norm2, mlp = _decoder(kind)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with_skip = model(ids).logits
    seen = {}  # per layer: the sublayers' own outputs, and what each block passes on
    for i, layer in enumerate(layers):  # hooks made before the surgery's see the sublayers' raw outputs
        getattr(layer, attn).register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("attn", i), out[0] if isinstance(out, tuple) else out))
        getattr(layer, norm2).register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("mid", i), a[0]))
        getattr(layer, mlp).register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("mlp", i), out))
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("block", i), out[0] if isinstance(out, tuple) else out))

    assert remove_residuals(model) == 2 * len(layers)
    assert describe_architecture(model)["residual_modules"] == 0
    without_skip = model(ids).logits
    for i in range(len(layers)):
        # h + attn(norm(h)) became attn(norm(h)), and the same for the MLP.
        torch.testing.assert_close(seen[("mid", i)], seen[("attn", i)])
        torch.testing.assert_close(seen[("block", i)], seen[("mlp", i)])
    assert not torch.allclose(with_skip, without_skip)
    without_skip.sum().backward()  # gradients still reach every block's weights
    assert all(p.grad is not None for p in layers[0].parameters())


def test_no_residual_cancels_the_inline_adds_of_distilbert_post_norm_blocks():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                           max_position_embeddings=32)
    model = transformers.DistilBertForMaskedLM(config).eval()
    layers = model.distilbert.transformer.layer
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with_skip = model(ids).logits
    seen = {}  # per layer: what each norm gets and what the sublayers themselves output
    for i, layer in enumerate(layers):  # hooks made before the surgery's see the sublayers' raw outputs
        layer.attention.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("attn", i), out[0]))
        layer.sa_layer_norm.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("sa_norm", i), a[0]))
        layer.ffn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("ffn", i), out))
        layer.output_layer_norm.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("out_norm", i), a[0]))

    assert remove_residuals(model) == 2 * len(layers)
    assert describe_architecture(model)["residuals_removed"] == len(layers)
    without_skip = model(ids).logits
    for i in range(len(layers)):
        # norm(h + attn(h)) became norm(attn(h)), and the same for the feed-forward sublayer.
        torch.testing.assert_close(seen[("sa_norm", i)], seen[("attn", i)])
        torch.testing.assert_close(seen[("out_norm", i)], seen[("ffn", i)])
    assert not torch.allclose(with_skip, without_skip)
    without_skip.sum().backward()
    assert all(p.grad is not None for p in layers[0].parameters())


def test_no_residual_refuses_parallel_residual_blocks():
    model, *_ = _decoder("neox-parallel")
    with pytest.raises(UsageError, match="what-if no-residual: found no residual block"):
        check_applicable(model, ("no-residual",))
    with pytest.raises(UsageError, match="pre-norm decoder blocks"):
        remove_residuals(model)


def test_no_residual_taps_follow_a_deep_copy():
    import copy

    model, layers, *_ = _decoder("gpt2")
    remove_residuals(model)
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(twin(ids).logits, model(ids).logits)
    taps = twin.transformer.h[0]._gradscope_residual_taps
    assert taps is not layers[0]._gradscope_residual_taps and all(t.residual is None for t in taps)


def test_no_residual_removes_the_shortcut_of_hugging_face_resnet_layers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="bottleneck")
    model = transformers.ResNetForImageClassification(config).eval()
    layers = [m for m in model.modules() if type(m).__name__ == "ResNetBottleNeckLayer"]
    x = torch.randn(1, 8, 8, 8)
    expected = layers[0].activation(layers[0].layer(x))
    assert remove_residuals(model) == len(layers) == 3
    torch.testing.assert_close(layers[0](x), expected)
    assert describe_architecture(model)["residual_modules"] == 0


class _PreNormBlock(nn.Module):
    """GPT-2's layout in miniature; ``skip_norm`` calls the attention without its norm first."""

    def __init__(self, skip_norm: bool = False):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)
        self.skip_norm = skip_norm

    def forward(self, x):
        x = x + self.attn(x if self.skip_norm else self.ln_1(input=x))  # the norm's input by keyword
        return x + self.mlp(self.ln_2(x))


def test_no_residual_taps_read_keyword_inputs_and_refuse_an_unknown_order():
    torch.manual_seed(0)
    block, x = _PreNormBlock(), torch.randn(2, 4)
    with torch.no_grad():
        expected = block.mlp(block.ln_2(block.attn(block.ln_1(x))))
    assert remove_residuals(block) == 2
    torch.testing.assert_close(block(x), expected)
    odd = _PreNormBlock(skip_norm=True)
    remove_residuals(odd)
    with pytest.raises(RuntimeError, match="Linear ran without its norm before it"):
        odd(x)


# --- re-initialization: transposed Conv1D, tied embeddings ---------------------------


def tiny_gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


def _conv1d_layers(model):
    return {name: m for name, m in model.named_modules() if type(m).__name__ == "Conv1D"}


def test_he_redraws_every_gpt2_conv1d_weight_with_the_fan_in_of_its_transposed_layout():
    model = tiny_gpt2_lm()
    conv1d = _conv1d_layers(model)
    assert len(conv1d) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    before = {name: m.weight.detach().clone() for name, m in conv1d.items()}
    assert reinit(model, "he", seed=0) == len(conv1d)  # the tied lm_head is not counted (next test)
    for name, m in conv1d.items():
        assert not torch.equal(m.weight, before[name]), name
        fan_in = m.weight.shape[0]  # Conv1D stores [in_features, out_features]
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), name
        assert torch.count_nonzero(m.bias) == 0
    # mlp.c_proj maps 128 -> 32: read as a Linear it would get fan_in 32 and twice the std.
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)
    reinit(model, "xavier", seed=0)
    c_fc = model.transformer.h[0].mlp.c_fc.weight  # [32, 128]
    assert c_fc.var().item() == pytest.approx(2 / (32 + 128), rel=0.1)


def test_he_variant_of_gpt2_counts_its_conv1d_layers_and_the_tied_head_apart():
    model = tiny_gpt2_lm()
    variants = list(build_variants(model, tiny_gpt2_lm, VariantPlan((), ("he",))))
    assert variants[0].changes == {"layers_reinitialized": 8, "embedding_tied_layers_kept": 1}
    assert variants[0].description == ("scratch with 8 Linear/convolution weights re-initialized (He normal); "
                                       "1 tied to the input embeddings kept")


def test_he_leaves_word_embeddings_tied_to_the_lm_head_as_they_are():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertForMaskedLM(config)
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is embeddings  # tied
    before_embeddings = embeddings.detach().clone()
    encoder = {name: m for name, m in model.bert.encoder.named_modules() if isinstance(m, nn.Linear)}
    before = {name: m.weight.detach().clone() for name, m in encoder.items()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert reinit(model, "he", seed=0) == len(linears) - 1  # every Linear but the tied decoder
    assert torch.equal(embeddings, before_embeddings)
    for name, m in encoder.items():
        assert not torch.equal(m.weight, before[name]), name
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / m.in_features), rel=0.15), name


# --- shallow: cut in place, and only where the model keeps its output -----------------


class SumBlock(nn.ModuleDict):
    """A stack container with its own forward (like torchvision's DenseNet ``_DenseBlock``)."""

    def forward(self, x):
        for layer in self.values():
            x = x + layer(x)
        return x


class StackNet(nn.Module):
    def __init__(self, head_layers: int = 1):
        super().__init__()
        self.body = SumBlock({f"layer{i}": nn.Linear(16, 16) for i in range(1, 5)})
        head = [nn.Linear(16, 16), nn.ReLU()] * (head_layers - 1) + [nn.Linear(16, 3)]
        self.head = nn.Sequential(*head)  # with two Linear layers, a numbered stack too (like VGG's classifier)

    def forward(self, x):
        return self.head(self.body(x))


def _loss(m, x):
    return m(x).pow(2).mean()


def test_shallow_cuts_a_container_in_place_keeping_its_class_forward_and_names():
    torch.manual_seed(0)
    model = StackNet()
    shallow, changes = make_shallow(model)
    assert changes == {"blocks_kept": {"body": [2, 4]}}
    assert type(shallow.body) is SumBlock and list(shallow.body.keys()) == ["layer1", "layer2"]
    x = torch.randn(5, 16)
    h = x + model.body.layer1(x)
    expected = model.head(h + model.body.layer2(h))
    torch.testing.assert_close(shallow(x), expected)
    assert len(model.body) == 4  # the original is untouched


def test_shallow_vit_keeps_the_names_of_its_encoder_layers_and_so_its_blocks():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    probe = output_probe(images, lambda m, x: m(x).sum())
    variants = {v.name: v for v in build_variants(model, None, VariantPlan(("shallow",)), Depth(find_blocks(model),
                                                                                             probe=probe))}
    shallow = variants["shallow"]
    assert list(shallow.model.encoder.layers._modules) == ["encoder_layer_0", "encoder_layer_1"]
    assert shallow.blocks == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert shallow.model(images).shape == (2, 10)


def test_shallow_leaves_a_numbered_head_whole_so_the_output_keeps_its_shape():
    torch.manual_seed(0)
    model = StackNet(head_layers=2)  # head: Linear(16, 16), ReLU, Linear(16, 3)
    assert block_containers(model) == ["body", "head"]
    x = torch.randn(5, 16)
    unchecked, _ = make_shallow(model)
    assert unchecked(x).shape == (5, 16)  # without a probe the head loses its last Linear: the bug
    shallow, changes = make_shallow(model, probe=output_probe(x, _loss))
    assert changes["blocks_kept"] == {"body": [2, 4]}
    assert changes["not_cut"] == {"head": "the output changes shape ([5, 3] -> [5, 16])"}
    assert len(shallow.head) == 3 and shallow(x).shape == (5, 3)


def test_shallow_is_skipped_with_the_reason_when_no_cut_keeps_the_model_working():
    from torchvision.models import DenseNet

    torch.manual_seed(0)
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=10)
    images = torch.randn(2, 3, 32, 32)
    # Cut in place, a dense block keeps its own forward (no "missing the required forward function")...
    unchecked, _ = make_shallow(model)
    assert type(unchecked.features.denseblock1).__name__ == "_DenseBlock"
    assert unchecked.features.denseblock1(torch.randn(2, 8, 8, 8)).shape == (2, 12, 8, 8)
    # ...but it then outputs fewer channels than the transition after it takes: no shallow DenseNet.
    probe = output_probe(images, lambda m, x: nn.functional.cross_entropy(m(x), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ShallowUnavailable, match=r"with features.denseblock1 cut, the forward fails \(RuntimeError.*; "
                                                 r"likewise for features.denseblock2; drop 'shallow' from `baselines`"):
        make_shallow(model, probe=probe)
    messages = []
    built = list(build_variants(model, lambda: DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                                                        bn_size=2, num_classes=10),
                                VariantPlan(("pretrained", "shallow"), ("he",)), Depth(find_blocks(model), probe=probe),
                                progress=messages.append))
    assert [v.name for v in built if isinstance(v, Variant)] == ["pretrained", "he"]
    assert any(m.startswith("skipping the shallow baseline: no block stack can be cut") for m in messages)
    # what was skipped comes back in the variants' place, with the reason the progress line gave
    (skipped,) = [v for v in built if isinstance(v, Skipped)]
    assert skipped.name == "shallow" and skipped.reason.startswith("no block stack can be cut")
    assert [v.name for v in built] == ["pretrained", "shallow", "he"]
    with pytest.raises(ShallowUnavailable):  # asked for by name: refused
        list(build_variants(model, None, VariantPlan(("shallow",), shallow_optional=False),
                            Depth(find_blocks(model), probe=probe)))


def test_shallow_albert_with_two_hidden_groups_is_a_clean_skip():
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=4, num_hidden_groups=2,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    model = AlbertModel(config)
    ids = torch.randint(0, 50, (2, 8))
    probe = output_probe(ids, lambda m, x: m(input_ids=x).last_hidden_state.sum())
    with pytest.raises(ShallowUnavailable, match="with encoder.albert_layer_groups cut, the forward fails"):
        make_shallow(model, probe=probe)


def test_shallow_albert_runs_its_shared_group_fewer_times_and_leaves_the_model_alone():
    from transformers import AlbertConfig, AlbertModel

    from gradscope.measure import repeated_blocks

    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=5,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    model = AlbertModel(config)
    ids = torch.randint(0, 50, (2, 8))
    loss = lambda m, x: m(input_ids=x).last_hidden_state.sum()  # noqa: E731
    count_runs = lambda m: repeated_blocks(m, ids, loss)  # noqa: E731
    shallow, changes = make_shallow(model, probe=output_probe(ids, loss), repeated=count_runs(model))
    assert changes == {"runs_kept": {"encoder.albert_layer_groups.0": [3, 5]}}
    assert count_runs(shallow) == {"encoder.albert_layer_groups.0": 3} and shallow.config.num_hidden_layers == 3
    assert model.config.num_hidden_layers == 5 and count_runs(model) == {"encoder.albert_layer_groups.0": 5}
    # a repeated block that does not run num_hidden_layers times (a plain loop): nothing to shorten
    loop = nn.ModuleDict({"cell": nn.Linear(4, 4)})
    with pytest.raises(ShallowUnavailable, match="does not run num_hidden_layers times"):
        make_shallow(loop, repeated={"cell": 3})
    # a model whose repeated block does not read num_hidden_layers: the copy's runs, counted, say so
    model.config.num_hidden_layers = 5
    fixed = type(model.encoder).forward

    def five_runs(self, hidden_states, *args, **kwargs):
        layers, self.config.num_hidden_layers = self.config.num_hidden_layers, 5
        try:
            return fixed(self, hidden_states, *args, **kwargs)
        finally:
            self.config.num_hidden_layers = layers

    model.encoder.forward = five_runs.__get__(model.encoder)
    with pytest.raises(ShallowUnavailable, match="runs 5 times, and a smaller num_hidden_layers does not change"):
        make_shallow(model, probe=output_probe(ids, loss), repeated=count_runs(model))


def test_output_probe_leaves_modes_and_buffers_as_they_were():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[2].eval()
    running_mean = model[1].running_mean.clone()
    assert output_probe(torch.randn(6, 4), _loss)(model) == (6, 4)
    assert torch.equal(model[1].running_mean, running_mean)
    assert [m.training for m in model.modules()] == [True, True, True, False]


# --- scratch: the library's own initialization ---------------------------------------------------------------


def _bert_lm_given_from_python(initializer_range: float):
    """A BertForMaskedLM whose weights were moved away from any init (tripled), with a masked-LM batch."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=32, initializer_range=initializer_range)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ids = torch.randint(5, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "labels": ids.clone()}


def _scratch_weight_rms(report) -> dict[str, float]:
    return {r["name"]: r["weight_l2"] / math.sqrt(math.prod(r["shape"])) for r in report.params
            if r["variant"] == "scratch"}


def test_scratch_of_a_hugging_face_model_given_as_a_module_has_the_models_own_initialization():
    """As on the command line: BERT draws its Linear and embedding weights from normal(0, initializer_range)
    (here 0.05, where PyTorch's defaults give these Linear layers an RMS of 0.072 or 0.051), LayerNorm weights 1,
    biases 0. With 4,096 values or more, the RMS is within 2% of it."""
    import gradscope

    model, batch = _bert_lm_given_from_python(initializer_range=0.05)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), device="cpu")
    report = gradscope.analyze(model, config, batch=batch)
    rms = _scratch_weight_rms(report)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
                 "bert.encoder.layer.1.intermediate.dense.weight", "bert.encoder.layer.1.output.dense.weight"):
        assert rms[name] == pytest.approx(0.05, rel=0.02), name
    assert rms["bert.encoder.layer.0.output.LayerNorm.weight"] == 1.0
    assert rms["bert.encoder.layer.0.output.dense.bias"] == 0.0
    assert report.meta["scratch_init"] == "the model's own, built again from its config"
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the given model as it was


def test_scratch_of_a_hugging_face_model_changed_after_it_was_built_falls_back_to_pytorch_defaults_and_says_so():
    import gradscope

    model, batch = _bert_lm_given_from_python(initializer_range=0.05)
    model.bert.encoder.layer[1].intermediate.intermediate_act_fn = nn.Tanh()  # its config would build a GELU
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), device="cpu")
    report = gradscope.analyze(model, config, batch=batch)
    assert report.meta["scratch_init"] == "PyTorch's defaults (each module's reset_parameters)"
    # PyTorch's Linear default: uniform within 1/sqrt(fan_in), an RMS of 1/sqrt(3 fan_in)
    assert _scratch_weight_rms(report)["bert.encoder.layer.0.attention.self.query.weight"] == pytest.approx(
        1 / math.sqrt(3 * 64), rel=0.02)
