"""Surgery does what it says: each what-if checked against the computation it claims to be."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gradscope.blocks import block_containers, find_blocks
from gradscope.errors import UsageError
from gradscope.variants import (
    build_variants,
    check_applicable,
    describe_architecture,
    make_shallow,
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
                                                  ("pretrained", "scratch", "shallow"), ("no-norm",), seed=0)}
    assert variants["pretrained"].blocks == find_blocks(model)
    assert variants["scratch"].blocks == variants["no-norm"].blocks == find_blocks(model)
    assert variants["shallow"].blocks == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


# --- the block rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, count, first, last",
    [
        ("resnet18", 8, "layer1.0", "layer4.1"),
        ("vit_b_16", 12, "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_11"),
        ("convnext_tiny", 24, "features.0", "classifier.2"),
        ("densenet121", 58, "features.denseblock1.denselayer1", "features.denseblock4.denselayer16"),
    ],
)
def test_blocks_are_found_from_the_model_itself(arch, count, first, last):
    blocks = find_blocks(torchvision.models.get_model(arch, weights=None))
    assert (len(blocks), blocks[0], blocks[-1]) == (count, first, last)


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
