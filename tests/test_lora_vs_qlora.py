"""LoRA vs QLoRA: NF4 layers and their bytes, adapter counts and files, chat template, data, diffusion LoRA."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedpeft.data import instruct
from fedpeft.experiments.lora_vs_qlora import report as exp
from fedpeft.models.causal_lm import build_on_meta, byte_level_tokenizer
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.quantization import nf4 as qlora
from fedpeft.training import diffusion, sft

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    return sft.save_base(sft.tiny_gemma2(tokenizer), tokenizer, tmp_path_factory.mktemp("base") / "tiny-gemma2")


def _adapter_model(base_dir, arm):
    base = sft.load_for_arm(base_dir, arm, torch.float32, torch.float32, double_quant=True)
    return attach_lora(base, 4, 8, 0.0, sft.SEED_TARGETS, seed=0, task_type="CAUSAL_LM")


# --- the paper architectures ----------------------------------------------------------------------------------

def test_gemma2_2b_adapter_matches_the_seeds_file_sizes():
    settings = exp.load("embedded")
    adapters = exp.paper_adapters(settings).set_index("model")
    g = adapters.loc["google/gemma-2-2b"]
    # 26 layers x r16 x [(2304+2048) q + (2304+1024) k + (2304+1024) v + (2048+2304) o + 3 x (2304+9216) mlp]
    assert g["adapter_parameters"] == 26 * 16 * (4352 + 3328 + 3328 + 4352 + 3 * 11520) == 20_766_720
    header32, header16 = g["fp32_file_bytes"] - 4 * 20_766_720, g["fp16_file_bytes"] - 2 * 20_766_720
    assert 0 < header16 < header32 < 50_000  # JSON header of 364 tensors (offsets have more digits in fp32)
    assert round(g["fp32_file_bytes"] / 1e6, 1) == 83.1 and round(g["fp16_file_bytes"] / 1e6, 1) == 41.6


def test_paper_architectures_have_their_published_sizes():
    assert sum(p.numel() for p in build_on_meta(sft.gemma2_2b_config()).parameters()) == 2_614_341_888
    assert sum(p.numel() for p in diffusion.sd15_unet_on_meta().parameters()) == 859_520_964


def test_analytic_memory_on_a_known_model():
    model = nn.Sequential(nn.Linear(128, 64, bias=False), nn.LayerNorm(64))  # 8192 linear, 128 other
    mem = exp.qlora.analytic_weight_memory(model, skip=()).set_index("storage")["bytes"]
    assert mem["fp32"] == 4 * 8320 and mem["bf16"] == 2 * 8320
    # 4096 packed bytes + 128 fp32 absmax + 64-byte code book, plus the bf16 norm
    assert mem["nf4 (linear) + bf16"] == 4096 + 128 * 4 + 64 + 256
    # double quant: 128 uint8 absmax, 1 fp32 nested scale, 1 KiB nested code, a 4-byte offset, the code book
    assert mem["nf4 + double quant (linear) + bf16"] == 4096 + 128 + 4 + 1024 + 4 + 64 + 256


@pytest.mark.parametrize("double_quant", [False, True])
def test_measured_nf4_bytes_match_the_formula(double_quant):
    layer = nn.Sequential(nn.Linear(256, 128, bias=False))
    assert qlora.quantize_linear_layers(layer, torch.float32, double_quant) == 1
    q = layer[0]
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.dtype == torch.uint8
    row = qlora.weight_bytes_by_layer_type(layer).set_index("layer type").loc["Linear4bit"]
    assert row["parameters"] == 256 * 128
    assert row["weight_bytes"] == 256 * 128 // 2  # two 4-bit codes per byte: an eighth of fp32
    assert row["weight_bytes"] + row["statistics_bytes"] == qlora.nf4_bytes(256 * 128, double_quant)



@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_formula_matches_measured_bytes_on_odd_layer_sizes(double_quant):
    # 3,000 and 210 weights are not multiples of the 64-weight block: the last block is partial
    model = nn.Sequential(nn.Linear(100, 30), nn.ReLU(), nn.Linear(30, 7, bias=False))
    qlora.quantize_linear_layers(model, torch.float32, double_quant)
    check = qlora.nf4_measured_vs_formula(model)
    assert check["layers"] == 2 and check["weights"] == 3000 + 210
    assert check["measured_bytes"] == check["formula_bytes"]
    assert check["formula_bytes"] == qlora.nf4_bytes(3000, double_quant) + qlora.nf4_bytes(210, double_quant)


def test_nf4_check_ignores_full_precision_layers():
    assert qlora.nf4_measured_vs_formula(nn.Linear(64, 64))["layers"] == 0


def test_reload_sentence_follows_the_measured_difference():
    import pandas as pd

    close = pd.DataFrame({"fp16_reload_max_abs_diff": [1e-4, 2e-4]})
    far = pd.DataFrame({"fp16_reload_max_abs_diff": [1e-4, 0.5]})
    assert "reload to the same logits" in exp.reload_sentence(close)
    assert "did not reload" in exp.reload_sentence(far) and "0.5" in exp.reload_sentence(far)

# --- the language model arms ----------------------------------------------------------------------------------

def test_qlora_load_holds_4bit_weights(base_dir):
    model = sft.load_for_arm(base_dir, "qlora", torch.float32, torch.float32)
    fp32 = sft.load_for_arm(base_dir, "lora", torch.float32, torch.float32)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 2 * 7  # 2 layers x the seven projections; the output head stays full precision
    for name, m in quantized.items():
        dense = dict(fp32.named_modules())[name]
        assert m.weight.dtype == torch.uint8 and m.weight.numel() == dense.weight.numel() // 2
        assert m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested


def test_a_qlora_step_changes_only_adapter_weights(base_dir, tokenizer):
    model = _adapter_model(base_dir, "qlora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = instruct.tokenize_pairs(instruct.generated_pairs(4), tokenizer, 64)
    sft.SFTTrainer(steps=1, grad_accum=2, lr=1e-2, warmup_ratio=0.0).train(model, examples, torch.Generator().manual_seed(0))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(".lora_" in n for n in changed)
    assert any(".lora_B." in n for n in changed)


def test_fp16_adapter_copy_reloads_to_the_same_outputs(base_dir, tmp_path):
    model = _adapter_model(base_dir, "lora")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    size32 = sft.save_adapter_copy(model, tmp_path / "fp32", torch.float32)
    size16 = sft.save_adapter_copy(model, tmp_path / "fp16", torch.float16)
    n = count_parameters(model, trainable_only=True)
    assert 2 * n <= size32 - size16 < 2 * n + 1000  # 2 bytes less per value (header offsets aside)
    fresh = _adapter_model(base_dir, "lora")
    sft.load_adapter_copy(fresh, tmp_path / "fp16")
    ids = torch.randint(2, 258, (1, 24))
    model.eval(), fresh.eval()
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, fresh(input_ids=ids).logits
    assert not torch.equal(ref, out)  # the copy really was rounded to fp16
    assert torch.allclose(ref, out, atol=1e-3)


def test_gemma_chat_template_on_known_examples(tokenizer):
    assert instruct.render(instruct.Pair("Add 1 and 2.", "", "1 + 2 = 3."), tokenizer) == (
        "</s><start_of_turn>user\nAdd 1 and 2.<end_of_turn>\n<start_of_turn>model\n1 + 2 = 3.<end_of_turn>\n")
    assert instruct.render(instruct.Pair("Summarise.", "  A long text.  ", "Short."), tokenizer) == (
        "</s><start_of_turn>user\nSummarise.\n\n  A long text.<end_of_turn>\n<start_of_turn>model\nShort.<end_of_turn>\n")


def test_stdlib_pairs_take_the_docstring_as_instruction_and_the_code_as_response(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        'def area(width, height=1):\n    """Return the area of a rectangle of the given width and height."""\n'
        '    return width * height\n\n\ndef _private(x):\n    """A private helper that is long enough to count."""\n    return x\n\n\n'
        'def short(x):\n    """Too short."""\n    return x\n')
    (tmp_path / "pkg" / "tests").mkdir()
    (tmp_path / "pkg" / "tests" / "helpers.py").write_text('def tested(x):\n    """A test helper with a long docstring here."""\n    return x\n')
    pairs = instruct.stdlib_pairs(min_doc_chars=20, root=tmp_path)
    assert pairs == [instruct.Pair("Write the Python function `area(width, height=1)` of the module `pkg`.",
                                   "Return the area of a rectangle of the given width and height.",
                                   "def area(width, height=1):\n    return width * height")]


def test_split_pairs_holds_out_the_fraction():
    pairs = instruct.generated_pairs(200)
    train, held = instruct.split_pairs(pairs, 0.01, seed=0)
    assert len(held) == 2 and len(train) == 198
    assert instruct.split_pairs(pairs, 0.01, seed=0) == (train, held)
    with pytest.raises(ValueError, match="eval_fraction"):
        instruct.split_pairs(pairs, 1.0)


# --- the diffusion arm ----------------------------------------------------------------------------------------

def test_unet_lora_trains_only_attention_adapters_and_qlora_quantizes_linears():
    comps = diffusion.build_components("tiny")
    images, captions = diffusion.generated_images(2, 32)
    latents, text = diffusion.encode_images(comps, images), diffusion.encode_captions(comps, captions)
    unet = copy.deepcopy(comps.unet)
    n_linear = sum(isinstance(m, nn.Linear) for m in unet.modules())
    assert qlora.quantize_linear_layers(unet, torch.float32, True) == n_linear
    diffusion.attach_unet_lora(unet, 4, 4)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].split(".")[-1] for n in trainable} == {"to_q", "to_k", "to_v", "0"}
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    trainer = diffusion.DiffusionTrainer(comps.scheduler, steps=1, batch_size=2, lr=1e-2)
    trainer.train(unet, diffusion.LatentCaptions(latents, text), torch.Generator().manual_seed(0))
    records = trainer.records
    assert len(records) == 1 and np.isfinite(records[0]["loss"])
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)


def test_image_folder_is_cropped_resized_and_captioned(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "starry-night.png")
    Image.new("RGB", (20, 30), (0, 0, 255)).save(tmp_path / "irises.jpg")
    images, captions = diffusion.load_image_folder(tmp_path, 16)
    assert images.shape == (2, 3, 16, 16)
    assert captions == ["a painting of irises in the style of van gogh", "a painting of starry night in the style of van gogh"]
    assert images[1, 0].mean() > 0.9 and images[1, 2].mean() < -0.9  # red, in [-1, 1]


def test_bad_inputs_are_named(base_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        diffusion.load_image_folder(tmp_path / "missing", 16)
    with pytest.raises(FileNotFoundError, match="holds no"):
        diffusion.load_image_folder(tmp_path, 16)
    unet = diffusion.build_components("tiny").unet
    with pytest.raises(ValueError, match=r"target_modules \['to_qkv'\]"):
        diffusion.attach_unet_lora(copy.deepcopy(unet), 4, 4, targets=("to_qkv",))
    with pytest.raises(ValueError, match="lora rank = 999 is not allowed"):
        diffusion.attach_unet_lora(copy.deepcopy(unet), 999, 4)
    base = sft.load_for_arm(base_dir, "lora", torch.float32, torch.float32)
    with pytest.raises(ValueError, match=r"target_modules \['c_attn'\] name no linear layer"):
        attach_lora(base, 4, 8, 0.0, ["c_attn"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="lora rank = 65"):
        attach_lora(base, 65, 8, 0.0, sft.SEED_TARGETS, task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="arm = 'int8'"):
        sft.load_for_arm(base_dir, "int8", torch.float32, torch.float32)
    with pytest.raises(ValueError, match="warm_steps"):
        exp.load("embedded", {"warm_steps": 6})
